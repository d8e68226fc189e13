// The CLIP BPE tokenizer against openai/CLIP's simple_tokenizer.py: the golden
// encode.jsonl (ids produced by the reference), and the rules of each cleaning step.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <vlmadapt/core/error.h>
#include <vlmadapt/backbone/tokenizer.h>

#include "core/resources.h"
#include "test_util.h"

namespace {

using vlmadapt::Error;
using vlmadapt::Tokenizer;
using Ids = std::vector<int64_t>;

struct Row {
  std::string text;
  Ids ids;
};

std::vector<Row> read_rows(const std::filesystem::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::vector<Row> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    rows.push_back({j.at("text").get<std::string>(), j.at("ids").get<Ids>()});
  }
  return rows;
}

const std::vector<Row>& golden_rows() {
  static const auto rows = read_rows(vlmadapt::testing::fixtures() / "tokenizer" / "encode.jsonl");
  return rows;
}

Ids concat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no vlmadapt::Error thrown";
  return "";
}

// ---- the golden file ------------------------------------------------------------

TEST(TokenizerGolden, EveryRowOfEncodeJsonlMatchesTheReference) {
  const Tokenizer tok;
  const auto& rows = golden_rows();
  ASSERT_GT(rows.size(), 4000u);
  size_t passed = 0;
  for (const auto& row : rows) {
    const Ids got = tok.encode(row.text);
    EXPECT_EQ(got, row.ids) << "text: " << row.text;
    passed += got == row.ids;
  }
  std::cout << "[ encode.jsonl ] " << passed << " / " << rows.size() << " rows match\n";
  EXPECT_EQ(passed, rows.size());
}

// ---- vocabulary ---------------------------------------------------------------------

TEST(TokenizerVocab, KnownIdsAndSize) {
  const Tokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 49408);
  EXPECT_EQ(tok.encode("a"), Ids{320});
  EXPECT_EQ(tok.encode("photo"), Ids{1125});
  EXPECT_EQ(tok.encode("!"), Ids{256});  // '!' is byte-char id 0, "!</w>" is 256
  EXPECT_EQ(tok.decode({0, 93, 188 + 32 + 256}),
            "!~  ");  // '!', '~', then byte 32 (space) + "</w>"
}

TEST(TokenizerVocab, ByteOrderOfTheFirst512Ids) {
  const Tokenizer tok;
  // ids 0..255: bytes 33..126, 161..172, 174..255, then 0..32, 127..160, 173;
  // ids 256..511: the same with "</w>", which decodes to a trailing space.
  std::vector<int> order;
  for (int b = 33; b <= 126; ++b) order.push_back(b);
  for (int b = 161; b <= 172; ++b) order.push_back(b);
  for (int b = 174; b <= 255; ++b) order.push_back(b);
  for (int b = 0; b <= 32; ++b) order.push_back(b);
  for (int b = 127; b <= 160; ++b) order.push_back(b);
  order.push_back(173);
  ASSERT_EQ(order.size(), 256u);
  std::vector<int64_t> id_of(256);
  for (int id = 0; id < 256; ++id) id_of[order[id]] = id;
  for (int id = 0; id < 256; ++id) {
    const std::string byte(1, static_cast<char>(order[id]));
    const std::string text = order[id] < 128 ? byte : "\xEF\xBF\xBD";  // a lone high byte: U+FFFD
    EXPECT_EQ(tok.decode({id}), text) << "id " << id;
    EXPECT_EQ(tok.decode({id + 256}), text + " ") << "id " << id + 256;
  }
  EXPECT_EQ(tok.decode({id_of[0xC3], id_of[0xA9] + 256}), "\xC3\xA9 ");  // "é" from two bytes
  EXPECT_EQ(tok.decode({512}), "in");                                    // the first merge, "i n"
  EXPECT_EQ(tok.decode({Tokenizer::kStartOfText, 320, Tokenizer::kEndOfText}), "a ");
}

TEST(TokenizerVocab, FileOnDiskEqualsBuiltIn) {
  const Tokenizer builtin;
  const Tokenizer from_file(
      (vlmadapt::testing::source_dir() / "third_party/clip/bpe_simple_vocab_16e6.txt.gz").string());
  ASSERT_EQ(from_file.vocab_size(), builtin.vocab_size());
  for (int64_t id = 0; id < builtin.vocab_size(); ++id)
    ASSERT_EQ(from_file.decode({id}), builtin.decode({id})) << "id " << id;
  const auto& rows = golden_rows();
  for (size_t i = 0; i < rows.size(); i += 7)
    EXPECT_EQ(from_file.encode(rows[i].text), rows[i].ids);
}

TEST(TokenizerVocab, PlainTextMergesFileIsAccepted) {
  const auto dir = vlmadapt::testing::temp_dir("tokenizer_plain");
  const auto path = (dir / "merges.txt").string();
  std::ofstream(path, std::ios::binary) << vlmadapt::resources::bpe_merges();
  const Tokenizer tok(path);
  EXPECT_EQ(tok.encode("a photo of a golf course."), (Ids{320, 1125, 539, 320, 3096, 2613, 269}));
  std::filesystem::remove_all(dir);
}

TEST(TokenizerVocab, MissingMergesFileNamesThePath) {
  const std::string path = "/nonexistent/dir/bpe_missing.txt.gz";
  EXPECT_NE(message_of([&] { Tokenizer t(path); }).find(path), std::string::npos);
}

TEST(TokenizerVocab, TruncatedMergesFileIsAnError) {
  const auto dir = vlmadapt::testing::temp_dir("tokenizer_short");
  const auto path = (dir / "short.txt").string();
  std::ofstream(path) << "#version: 0.2\ni n\nt h\n";
  const std::string msg = message_of([&] { Tokenizer t(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("48894"), std::string::npos) << msg;
  std::filesystem::remove_all(dir);
}

TEST(TokenizerVocab, CopiesAreCheap) {
  // Built-in tables are built once per process: after the first, constructions are instant.
  const Tokenizer first;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 1000; ++i) {
    Tokenizer t;
    ASSERT_EQ(t.vocab_size(), 49408);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(500));
}

// ---- tokenize -------------------------------------------------------------------------

Ids row_of(const at::Tensor& t, int64_t i) {
  const at::Tensor row = t[i].contiguous();
  return Ids(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
}

Ids padded(Ids ids, size_t length) {
  ids.resize(length, 0);
  return ids;
}

TEST(TokenizerTokenize, StartEndPaddingShapeAndDtype) {
  const Tokenizer tok;
  const at::Tensor t = tok.tokenize({"a photo of a"});
  EXPECT_EQ(t.sizes(), (at::IntArrayRef{1, 77}));
  EXPECT_EQ(t.scalar_type(), at::kLong);
  EXPECT_EQ(row_of(t, 0), padded({49406, 320, 1125, 539, 320, 49407}, 77));
}

TEST(TokenizerTokenize, SeveralTextsOneRowEach) {
  const Tokenizer tok;
  const at::Tensor t = tok.tokenize({"", "beagle", "a photo of a golf course."}, 10);
  EXPECT_EQ(t.sizes(), (at::IntArrayRef{3, 10}));
  EXPECT_EQ(row_of(t, 0), padded({49406, 49407}, 10));
  EXPECT_EQ(row_of(t, 1), padded({49406, 30044, 49407}, 10));
  EXPECT_EQ(row_of(t, 2), padded({49406, 320, 1125, 539, 320, 3096, 2613, 269, 49407}, 10));
  EXPECT_EQ(tok.tokenize({}).sizes(), (at::IntArrayRef{0, 77}));
}

TEST(TokenizerTokenize, ExactFitIsKept) {
  const Tokenizer tok;
  const std::string text = "a photo of a golf course.";  // 7 ids + start + end = 9
  EXPECT_EQ(row_of(tok.tokenize({text}, 9), 0),
            (Ids{49406, 320, 1125, 539, 320, 3096, 2613, 269, 49407}));
  EXPECT_THROW(tok.tokenize({text}, 8), Error);
}

std::string many_words(int n) {
  std::string text;
  for (int i = 0; i < n; ++i) text += i % 2 ? "photo " : "beagle ";
  return text;
}

TEST(TokenizerTokenize, TooLongNamesTheTextAndTheLengths) {
  const Tokenizer tok;
  const std::string text = many_words(100);  // 100 ids + start + end
  const std::string msg = message_of([&] { tok.tokenize({"a", text}); });
  EXPECT_NE(msg.find("beagle photo beagle photo"), std::string::npos) << msg;
  EXPECT_NE(msg.find("102"), std::string::npos) << msg;
  EXPECT_NE(msg.find("77"), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 400u) << "the text is abbreviated";
}

TEST(TokenizerTokenize, TruncateKeepsThePrefixAndEndsWithEot) {
  const Tokenizer tok;
  const std::string text = many_words(100);
  const Ids ids = tok.encode(text);
  ASSERT_EQ(ids.size(), 100u);
  const Ids row = row_of(tok.tokenize({text}, 77, /*truncate=*/true), 0);
  Ids expected{49406};
  expected.insert(expected.end(), ids.begin(), ids.begin() + 75);
  expected.push_back(49407);
  EXPECT_EQ(row, expected);
  EXPECT_EQ(row_of(tok.tokenize({text}, 1, true), 0), Ids{49407});
  // Short texts are unaffected by truncate.
  EXPECT_EQ(row_of(tok.tokenize({"beagle"}, 5, true), 0), (Ids{49406, 30044, 49407, 0, 0}));
}

TEST(TokenizerTokenize, NonPositiveContextLengthIsAnError) {
  const Tokenizer tok;
  EXPECT_THROW(tok.tokenize({"a"}, 0), Error);
  EXPECT_THROW(tok.tokenize({"a"}, -3, true), Error);
}

// ---- decode ---------------------------------------------------------------------------

TEST(TokenizerDecode, RoundTripsLowercaseAsciiSentences) {
  const Tokenizer tok;
  const std::vector<std::string> sentences = {
      "a photo of a golf course", "the quick brown fox jumps over the lazy dog",
      "a blurry photo of the lampshade",
      "supercalifragilisticexpialidocious xylophone zzzzzz qwertyuiop",
      "mousetrap minibus stratified pineapple vacuum cleaner"};
  for (const auto& s : sentences) {
    // Every word ends in "</w>", which decodes to a space.
    EXPECT_EQ(tok.decode(tok.encode(s)), s + " ");
  }
  // Punctuation and digits are pre-tokens of their own, so they come back spaced out.
  EXPECT_EQ(tok.decode(tok.encode("F-16A/B, 2012!")), "f - 1 6 a / b , 2 0 1 2 ! ");
}

TEST(TokenizerDecode, NonAsciiRoundTripsAndSplitBytesBecomeReplacementChars) {
  const Tokenizer tok;
  EXPECT_EQ(tok.decode(tok.encode("caf\u00e9 \u65e5\u672c\u8a9e \u2605")),
            "caf\u00e9 \u65e5\u672c\u8a9e \u2605 ");
  // "עברית" encodes as byte pairs; a lone lead byte decodes to U+FFFD like
  // bytes.decode('utf-8', errors='replace').
  const Ids hebrew = tok.encode("\u05e2\u05d1\u05e8\u05d9\u05ea");
  ASSERT_EQ(hebrew, (Ids{147, 95, 147, 239, 147, 101, 147, 247, 147, 359}));
  EXPECT_EQ(tok.decode(hebrew), "\u05e2\u05d1\u05e8\u05d9\u05ea ");
  EXPECT_EQ(tok.decode({147, 320}), "\ufffda ");
  EXPECT_EQ(tok.decode({95}), "\ufffd");
}

TEST(TokenizerDecode, UnknownIdIsAnError) {
  const Tokenizer tok;
  EXPECT_NE(message_of([&] { tok.decode({320, 49408}); }).find("49408"), std::string::npos);
  EXPECT_THROW(tok.decode({-1}), Error);
}

// ---- cleaning: html.unescape (twice), strip, NFC, whitespace, lowercase ------------------
// Expected texts are Python's html.unescape(html.unescape(x)), written so that they
// contain no reference themselves (spaces added where they do not change the tokens).

TEST(TokenizerClean, HtmlUnescapeLikePython) {
  const Tokenizer tok;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"&notin", "\u00acin"},  // legacy name without ';': longest known prefix
      {"&notin;", "\u2209"},
      {"&nothing", "\u00aching"},
      {"&amp;amp;", "&"},  // unescaped twice
      {"&amp;lt;", "<"},
      {"&ampamp;", "&"},
      {"&ampx", "&x"},
      {"&AMP;", "&"},
      {"&Amp;", "& amp;"},  // unknown: kept
      {"&lt&gt", "<>"},
      {"&euro&euro;", "& euro\u20ac"},  // "euro" needs its ';'
      {"&CounterClockwiseContourIntegral;", "\u2233"},
      {"&#x41;&#65", "aa"},
      {"&#X4a;", "j"},
      {"&#0065;b", "ab"},
      {"&#x0000041;", "a"},
      {"&#8364x", "\u20acx"},
      {"&#128;&#x9F;", "\u20ac\u0178"},  // cp1252 remap of 0x80-0x9F
      {"&#0;", "\ufffd"},
      {"&#xD800;", "\ufffd"},    // surrogate
      {"&#x110000;", "\ufffd"},  // beyond Unicode
      {"&#99999999999999999999999;", "\ufffd"},
      {"x&#1;y", "xy"},  // dropped code points
      {"x&#x7f;y&#xFFFF;", "xy"},
      {"a&#13;b", "a b"},  // CR, then whitespace_clean
      {"&a;", "& a;"},
      {"&gt;&&lt;", ">&<"},
      {"&&#38;#38;", "&&"},
  };
  for (const auto& [escaped, plain] : cases)
    EXPECT_EQ(tok.encode(escaped), tok.encode(plain)) << escaped;
  // Not references: "&#" is one punctuation run.
  EXPECT_EQ(tok.encode("&#x;"), concat({tok.encode("&#"), tok.encode("x"), tok.encode(";")}));
  // "&amp;amp;lt;" unescapes (twice) to the literal text "&lt;".
  EXPECT_EQ(tok.encode("&amp;amp;lt;"),
            concat({tok.encode("&"), tok.encode("lt"), tok.encode(";")}));
  // A name is at most 32 characters: 40 a's are left alone.
  const std::string a40(40, 'a');
  EXPECT_EQ(tok.encode("&" + a40 + ";"),
            concat({tok.encode("&"), tok.encode(a40), tok.encode(";")}));
}

TEST(TokenizerClean, WhitespaceAndStrip) {
  const Tokenizer tok;
  const Ids ab = tok.encode("a b");
  EXPECT_EQ(tok.encode("  a\t\n\r\n\u3000\u2003\u00a0\u0085b \u2028"), ab);
  // str.strip() also removes U+001C..U+001F, which regex's \s does not match:
  EXPECT_EQ(tok.encode("\x1c a \x1f"), tok.encode("a"));
  // ...but inside the text U+001C is a pre-token: byte 28 is id 188 + 28, plus 256 for "</w>".
  EXPECT_EQ(tok.encode("a \x1c b"), (Ids{320, 188 + 28 + 256, 321}));
  EXPECT_NE(tok.encode("a \x1c b"), ab);
  EXPECT_EQ(tok.encode(""), Ids{});
  EXPECT_EQ(tok.encode(" \t\n "), Ids{});
}

TEST(TokenizerClean, NfcAndLowercase) {
  const Tokenizer tok;
  EXPECT_EQ(tok.encode("e\u0301"), tok.encode("\u00e9"));  // NFC composes
  EXPECT_EQ(tok.encode("\u00c0B \u0100"), tok.encode("\u00e0b \u0101"));
  EXPECT_EQ(tok.encode("\u0130"), tok.encode("i\u0307"));  // full lowercase, not Turkish
  EXPECT_EQ(tok.encode("\u039f\u0394\u039f\u03a3"),
            tok.encode("\u03bf\u03b4\u03bf\u03c2"));  // final sigma
  EXPECT_EQ(tok.encode("\u03a3\u0391"), tok.encode("\u03c3\u03b1"));
  EXPECT_NE(tok.encode("\u03bf\u03c2"), tok.encode("\u03bf\u03c3"));
  EXPECT_EQ(tok.encode("\u2163"), tok.encode("\u2173"));  // Roman numeral four
  EXPECT_EQ(tok.encode("PHOTO"), Ids{1125});
}

TEST(TokenizerClean, InvalidUtf8IsAnError) {
  const Tokenizer tok;
  const std::string msg = message_of([&] { tok.encode("bad \xff text"); });
  EXPECT_NE(msg.find("bad "), std::string::npos) << msg;
  EXPECT_NE(msg.find("UTF-8"), std::string::npos) << msg;
}

// ---- pre-tokenisation -----------------------------------------------------------------

TEST(TokenizerPreTokens, SpecialTokensAndContractions) {
  const Tokenizer tok;
  EXPECT_EQ(tok.encode("<|startoftext|>"), Ids{49406});
  EXPECT_EQ(tok.encode("a<|ENDOFTEXT|>b"), (Ids{320, 49407, 321}));  // lowercased first
  // Inside a run of punctuation the special token is not seen.
  EXPECT_EQ(tok.encode("!<|endoftext|>"),
            concat({tok.encode("!<|"), tok.encode("endoftext"), tok.encode("|>")}));
  EXPECT_EQ(tok.encode("don't"), concat({tok.encode("don"), tok.encode("'t")}));
  EXPECT_EQ(tok.encode("they'RE"), concat({tok.encode("they"), tok.encode("'re")}));
  // Alternatives are tried in order at each position: "'''s" is a punctuation run, then a letter.
  EXPECT_EQ(tok.encode("'''s"), concat({tok.encode("'''"), tok.encode("s")}));
  EXPECT_EQ(tok.encode("'x"), concat({tok.encode("'"), tok.encode("x")}));
}

TEST(TokenizerPreTokens, LettersNumbersAndOther) {
  const Tokenizer tok;
  // Each digit is its own pre-token; letters of any script form one run.
  EXPECT_EQ(tok.encode("2012"),
            concat({tok.encode("2"), tok.encode("0"), tok.encode("1"), tok.encode("2")}));
  EXPECT_EQ(tok.encode("x\u00bd"),
            concat({tok.encode("x"), tok.encode("\u00bd")}));  // No is a number
  EXPECT_NE(tok.encode("ab\u0436"), concat({tok.encode("ab"), tok.encode("\u0436")}));
  EXPECT_EQ(tok.encode("a_b"), concat({tok.encode("a"), tok.encode("_"), tok.encode("b")}));
  // A combining mark is "other" (Mn is neither L nor N)...
  EXPECT_EQ(tok.encode("b\u0301"), concat({tok.encode("b"), tok.encode("\u0301")}));
  // ...but under IGNORECASE U+0345 matches \p{L} through its case variants (iota).
  EXPECT_NE(tok.encode("b\u0345"), concat({tok.encode("b"), tok.encode("\u0345")}));
}

// ---- concurrency ----------------------------------------------------------------------

TEST(TokenizerThreads, ConcurrentEncodesShareTheCache) {
  // A fresh table (empty cache), filled by four threads at once.
  const Tokenizer tok(
      (vlmadapt::testing::source_dir() / "third_party/clip/bpe_simple_vocab_16e6.txt.gz").string());
  const auto& rows = golden_rows();
  std::vector<size_t> wrong(4, 0);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = t; i < rows.size() + t; ++i) {
        const auto& row = rows[i % rows.size()];
        wrong[t] += tok.encode(row.text) != row.ids;
      }
    });
  for (auto& th : threads) th.join();
  for (size_t t = 0; t < 4; ++t) EXPECT_EQ(wrong[t], 0u) << "thread " << t;
}

}  // namespace
