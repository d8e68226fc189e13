// CLIP's byte-level BPE tokenizer: a port of openai/CLIP simple_tokenizer.py.
//
// encode() runs the reference pipeline step by step:
//   basic_clean       ftfy.fix_text (NOT reproduced, see below), html.unescape twice, strip
//   NFC               ftfy's final normalisation, the one part of ftfy we do reproduce
//   whitespace_clean  regex \s+ -> ' ', strip
//   lower             Python str.lower(): full Unicode lowercase with final sigma
//   pre-tokenise      the reference regex, as a hand-written scanner (below)
//   BPE               per pre-token over its UTF-8 bytes, cached
// ftfy.fix_text repairs mojibake by heuristics and also uncurls quotes, fixes
// ligatures and character widths, drops control characters and, in a text without
// '<', unescapes HTML a third time; text it would change can tokenize differently
// here. Unicode data comes from ICU, whose Unicode version may differ from the
// reference's Python/regex for characters assigned in recent versions.
#include <vlmadapt/backbone/tokenizer.h>

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <string_view>
#include <unordered_map>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>

#include "core/resources.h"

namespace vlmadapt {
namespace {

#include "html_entities.inc"

using U32 = std::u32string;

// ---- UTF-8 ----------------------------------------------------------------

// Shows the start of a text in an error message without cutting a UTF-8 sequence.
std::string abbreviate(std::string_view text, size_t max_bytes = 60) {
  if (text.size() <= max_bytes) return std::string(text);
  size_t end = max_bytes;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return std::string(text.substr(0, end)) + "...";
}

// Code points of UTF-8 text. Ill-formed input is an error naming `what` and showing
// `subject`; without `what` each maximal ill-formed subpart becomes U+FFFD, like
// Python's bytes.decode('utf-8', errors='replace').
U32 utf8_to_u32(std::string_view s, const char* what, std::string_view subject = {}) {
  U32 out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const int32_t n = static_cast<int32_t>(s.size());
  for (int32_t i = 0; i < n;) {
    const int32_t at = i;
    UChar32 c;
    U8_NEXT(p, i, n, c);
    if (c < 0 && !what) c = 0xFFFD;
    if (c < 0)
      throw Error(std::string(what) + " \"" + abbreviate(subject) + "\" is not valid UTF-8 (byte " +
                  std::to_string(at) + ")");
    out.push_back(static_cast<char32_t>(c));
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  uint8_t buf[4];
  int32_t len = 0;
  UBool error = false;
  U8_APPEND(buf, len, 4, static_cast<UChar32>(c), error);
  out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(len));
}

std::string u32_to_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// ---- Python's html.unescape -------------------------------------------------
// The reference regex is &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?),
// each match replaced by _replace_charref; the tables come from html_entities.inc.

const HtmlEntity* find_entity(std::u32string_view name) {
  std::string key;
  for (char32_t c : name) {
    if (c > 0x7F) return nullptr;  // every entity name is ASCII
    key.push_back(static_cast<char>(c));
  }
  const auto* end = std::end(kHtmlEntities);
  const auto* it =
      std::lower_bound(std::begin(kHtmlEntities), end, key,
                       [](const HtmlEntity& e, const std::string& k) { return e.name < k; });
  return it != end && it->name == key ? it : nullptr;
}

// The text Python returns for &#num; (num is capped at 0x110000: "too large").
void append_charref(uint32_t num, U32& out) {
  const auto* end = std::end(kInvalidCharrefs);
  const auto* remap =
      std::lower_bound(std::begin(kInvalidCharrefs), end, num,
                       [](const CharrefRemap& r, uint32_t n) { return r.from < n; });
  if (remap != end && remap->from == num) {
    out.push_back(remap->to);
  } else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
    out.push_back(0xFFFD);
  } else if (!std::binary_search(std::begin(kInvalidCodepoints), std::end(kInvalidCodepoints),
                                 static_cast<char32_t>(num))) {
    out.push_back(static_cast<char32_t>(num));
  }
}

// The value of an ASCII digit of base 10 (or 16), -1 for anything else.
int digit(char32_t c, bool hex) {
  if (c >= '0' && c <= '9') return static_cast<int>(c - '0');
  const char32_t lower = c | 0x20;
  return hex && lower >= 'a' && lower <= 'f' ? static_cast<int>(lower - 'a' + 10) : -1;
}

// &#123; or &#x7B; at s[i]; returns the characters consumed, 0 when it is not one.
size_t numeric_ref(const U32& s, size_t i, U32& out) {
  size_t k = i + 2;
  const bool hex = k < s.size() && (s[k] == 'x' || s[k] == 'X');
  if (hex) ++k;
  const size_t first = k;
  uint32_t num = 0;
  for (int d; k < s.size() && (d = digit(s[k], hex)) >= 0; ++k)
    num = std::min<uint32_t>(num * (hex ? 16 : 10) + static_cast<uint32_t>(d), 0x110000);
  if (k == first) return 0;
  if (k < s.size() && s[k] == ';') ++k;
  append_charref(num, out);
  return k - i;
}

bool ends_entity_name(char32_t c) {
  return std::u32string_view(U"\t\n\f <&#;").find(c) != U32::npos;
}

// &name; at s[i]: the whole name (with its ';') if known, else the longest known
// prefix of at least two characters followed by the rest verbatim, else verbatim.
size_t named_ref(const U32& s, size_t i, U32& out) {
  const size_t begin = i + 1;
  size_t k = begin;
  while (k < s.size() && k - begin < 32 && !ends_entity_name(s[k])) ++k;
  if (k == begin) return 0;
  if (k < s.size() && s[k] == ';') ++k;
  const std::u32string_view name(s.data() + begin, k - begin);
  size_t x = name.size();
  const HtmlEntity* entity = find_entity(name);
  while (!entity && x > 2) entity = find_entity(name.substr(0, --x));
  if (entity) {
    out += utf8_to_u32(entity->utf8, "html entity", entity->name);
    out += name.substr(x);
  } else {
    out.push_back('&');
    out += name;
  }
  return 1 + name.size();
}

U32 html_unescape(const U32& s) {
  if (s.find(U'&') == U32::npos) return s;
  U32 out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t used = 0;
    if (s[i] == '&') {
      const bool numeric = i + 1 < s.size() && s[i + 1] == '#';
      used = numeric ? numeric_ref(s, i, out) : named_ref(s, i, out);
    }
    if (used == 0) out.push_back(s[i++]);
    i += used;
  }
  return out;
}

// ---- whitespace, NFC, lowercase ---------------------------------------------

// Python str.isspace() (used by str.strip()): bidi class WS, B or S, or category Zs.
bool py_isspace(char32_t c) {
  if (u_charType(c) == U_SPACE_SEPARATOR) return true;
  const auto dir = u_charDirection(c);
  return dir == U_WHITE_SPACE_NEUTRAL || dir == U_BLOCK_SEPARATOR || dir == U_SEGMENT_SEPARATOR;
}

// `regex`'s \s is the Unicode White_Space property (unlike str.isspace, no U+001C..1F).
bool regex_space(char32_t c) { return u_isUWhiteSpace(c); }

U32 py_strip(const U32& s) {
  size_t b = 0, e = s.size();
  while (b < e && py_isspace(s[b])) ++b;
  while (e > b && py_isspace(s[e - 1])) --e;
  return s.substr(b, e - b);
}

icu::UnicodeString to_icu(const U32& s) {
  return icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(s.data()),
                                       static_cast<int32_t>(s.size()));
}

U32 from_icu(const icu::UnicodeString& u) {
  U32 out;
  for (int32_t i = 0; i < u.length(); i = u.moveIndex32(i, 1)) out.push_back(u.char32At(i));
  return out;
}

U32 nfc(const U32& s) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(err);
  const icu::UnicodeString out =
      U_SUCCESS(err) ? nfc->normalize(to_icu(s), err) : icu::UnicodeString();
  if (U_FAILURE(err)) throw Error(std::string("ICU NFC normalisation failed: ") + u_errorName(err));
  return from_icu(out);
}

U32 whitespace_clean(const U32& s) {
  U32 out;
  for (size_t i = 0; i < s.size();) {
    if (!regex_space(s[i])) {
      out.push_back(s[i++]);
      continue;
    }
    out.push_back(' ');
    while (i < s.size() && regex_space(s[i])) ++i;
  }
  return py_strip(out);
}

// Root-locale full lowercase: Python's str.lower() (SpecialCasing without the
// language-specific rules, and the Final_Sigma context).
U32 lower(const U32& s) {
  icu::UnicodeString u = to_icu(s);
  u.toLower(icu::Locale::getRoot());
  return from_icu(u);
}

// ---- pre-tokenisation -------------------------------------------------------
// The reference pattern, compiled with IGNORECASE:
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// findall() tries the alternatives in order at each position and skips a
// position where none matches (whitespace).

enum class Cls { kSpace, kLetter, kNumber, kOther };

// Under IGNORECASE `regex` tests a class against every case variant of a character,
// so e.g. U+0345 (a mark whose case variants are iota) counts as a letter.
Cls classify(char32_t c) {
  const UChar32 variants[] = {static_cast<UChar32>(c), u_tolower(c), u_toupper(c), u_totitle(c),
                              u_foldCase(c, U_FOLD_CASE_DEFAULT)};
  bool letter = false, number = false, space = false;
  for (UChar32 v : variants) {
    const uint32_t mask = U_GET_GC_MASK(v);
    letter |= (mask & U_GC_L_MASK) != 0;
    number |= (mask & U_GC_N_MASK) != 0;
    space |= regex_space(v);
  }
  if (letter) return Cls::kLetter;
  if (number) return Cls::kNumber;
  return space ? Cls::kSpace : Cls::kOther;
}

// A literal of the pattern at s[i], compared case-insensitively (simple folding).
bool literal_at(const U32& s, size_t i, std::u32string_view lit) {
  if (s.size() - i < lit.size()) return false;
  for (size_t k = 0; k < lit.size(); ++k)
    if (u_foldCase(s[i + k], U_FOLD_CASE_DEFAULT) != static_cast<UChar32>(lit[k])) return false;
  return true;
}

// The length of the match of the pattern at s[i]; 0 when nothing matches there.
size_t match_at(const U32& s, size_t i) {
  static constexpr std::u32string_view kLiterals[] = {
      U"<|startoftext|>", U"<|endoftext|>", U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  for (std::u32string_view lit : kLiterals)
    if (literal_at(s, i, lit)) return lit.size();
  const Cls cls = classify(s[i]);
  if (cls == Cls::kSpace) return 0;
  if (cls == Cls::kNumber) return 1;
  size_t k = i + 1;
  while (k < s.size() && classify(s[k]) == cls) ++k;  // a letter run or an "other" run
  return k - i;
}

// ---- the vocabulary ---------------------------------------------------------

constexpr size_t kMergeLines = 49152 - 256 - 2;  // merges used by the reference: lines [1, 48895)

// bytes_to_unicode(): the printable Latin-1 bytes stand for themselves, the other 68
// are shifted to 256.. in byte order. Returns the bytes in vocabulary order.
std::array<uint8_t, 256> byte_order(std::array<char32_t, 256>& byte_char) {
  std::array<uint8_t, 256> order{};
  size_t n = 0;
  auto printable = [](int b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  };
  char32_t next = 256;
  for (int pass = 0; pass < 2; ++pass) {
    for (int b = 0; b < 256; ++b) {
      if (printable(b) != (pass == 0)) continue;
      byte_char[b] = pass == 0 ? static_cast<char32_t>(b) : next++;
      order[n++] = static_cast<uint8_t>(b);
    }
  }
  return order;
}

// The merges of the file: lines [1, 1 + kMergeLines), each "left right".
std::vector<std::pair<std::string, std::string>> parse_merges(const std::string& text,
                                                              const std::string& what) {
  std::vector<std::pair<std::string, std::string>> merges;
  size_t pos = text.find('\n');  // line 0 is the version header
  for (size_t line = 1; line <= kMergeLines; ++line) {
    const bool at_end = pos == std::string::npos || pos + 1 == text.size();  // "\n" ends the file
    if (at_end)
      throw Error(what + ": has " + std::to_string(line - 1) + " merge lines, expected " +
                  std::to_string(kMergeLines));
    const size_t end = text.find('\n', pos + 1);
    std::istringstream fields(text.substr(pos + 1, end - pos - 1));  // like Python's str.split()
    fields.imbue(std::locale::classic());
    std::string left, right, extra;
    if (!(fields >> left >> right) || fields >> extra)
      throw Error(what + ": line " + std::to_string(line + 1) +
                  " is not two space-separated symbols");
    merges.emplace_back(std::move(left), std::move(right));
    pos = end;
  }
  return merges;
}

}  // namespace

// ---- Impl -------------------------------------------------------------------

struct Tokenizer::Impl {
  struct Merge {
    int32_t rank;
    int32_t id;  // of the concatenated symbol
  };
  std::vector<std::string> vocab;    // id -> symbol, in the byte-level alphabet, as the reference
  std::vector<std::string> decoded;  // id -> the bytes the symbol stands for
  std::unordered_map<std::string, int32_t> encoder;   // last id wins, like dict(zip(vocab, ...))
  std::unordered_map<uint64_t, Merge> merges;         // (left id << 32 | right id)
  std::array<int32_t, 256> byte_id{}, byte_eow_id{};  // a byte alone, and as a word's last
  int32_t sot = 0, eot = 0;

  static constexpr size_t kMaxCache = 1 << 20;  // stop caching beyond this many words
  mutable std::shared_mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  Impl(const std::string& merges_text, const std::string& what);
  void add_decoded(const std::string& symbol, const std::array<int, 324>& byte_of,
                   const std::string& what);
  std::vector<int32_t> bpe(const std::string& word) const;
  void merge_best_pair(std::vector<int32_t>& word, const Merge& best, int32_t left,
                       int32_t right) const;
};

Tokenizer::Impl::Impl(const std::string& merges_text, const std::string& what) {
  std::array<char32_t, 256> byte_char{};
  const auto order = byte_order(byte_char);
  std::array<int, 324> byte_of{};  // byte_decoder
  byte_of.fill(-1);
  for (int b = 0; b < 256; ++b) byte_of[byte_char[b]] = b;

  const auto merge_pairs = parse_merges(merges_text, what);
  for (uint8_t b : order) vocab.push_back(u32_to_utf8(U32(1, byte_char[b])));
  for (uint8_t b : order) vocab.push_back(u32_to_utf8(U32(1, byte_char[b])) + "</w>");
  for (const auto& [left, right] : merge_pairs) vocab.push_back(left + right);
  vocab.push_back("<|startoftext|>");
  vocab.push_back("<|endoftext|>");
  for (size_t id = 0; id < vocab.size(); ++id) {
    encoder[vocab[id]] = static_cast<int32_t>(id);
    add_decoded(vocab[id], byte_of, what);
  }
  for (size_t i = 0; i < 256; ++i) {
    byte_id[order[i]] = encoder.at(vocab[i]);
    byte_eow_id[order[i]] = encoder.at(vocab[256 + i]);
  }
  sot = encoder.at("<|startoftext|>");
  eot = encoder.at("<|endoftext|>");
  // Symbols are always vocabulary entries, so a merge of a non-entry can never apply.
  for (size_t rank = 0; rank < merge_pairs.size(); ++rank) {
    const auto& [left, right] = merge_pairs[rank];
    const auto l = encoder.find(left), r = encoder.find(right);
    if (l == encoder.end() || r == encoder.end()) continue;
    const uint64_t key =
        (static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(r->second);
    merges[key] = Merge{static_cast<int32_t>(rank), encoder.at(left + right)};  // last rank wins
  }
  cache["<|startoftext|>"] = {sot};  // the reference seeds its cache the same way
  cache["<|endoftext|>"] = {eot};
}

// The reference decodes symbols char by char through byte_decoder; a character
// outside the byte alphabet would fail there, so it is rejected when loading.
void Tokenizer::Impl::add_decoded(const std::string& symbol, const std::array<int, 324>& byte_of,
                                  const std::string& what) {
  std::string bytes;
  for (char32_t c : utf8_to_u32(symbol, (what + ": symbol").c_str(), symbol)) {
    if (c >= byte_of.size() || byte_of[c] < 0)
      throw Error(what + ": symbol '" + symbol + "' has a character outside the byte alphabet");
    bytes.push_back(static_cast<char>(byte_of[c]));
  }
  decoded.push_back(std::move(bytes));
}

// Replaces every (left, right) pair, scanning left to right, by the merged symbol.
void Tokenizer::Impl::merge_best_pair(std::vector<int32_t>& word, const Merge& best, int32_t left,
                                      int32_t right) const {
  size_t out = 0;
  for (size_t i = 0; i < word.size(); ++out) {
    if (word[i] == left && i + 1 < word.size() && word[i + 1] == right) {
      word[out] = best.id;
      i += 2;
    } else {
      word[out] = word[i++];
    }
  }
  word.resize(out);
}

// The reference bpe(): starting from the bytes (the last one marked end-of-word),
// repeatedly merge the adjacent pair of lowest rank until none is in the table.
std::vector<int32_t> Tokenizer::Impl::bpe(const std::string& token) const {
  {
    std::shared_lock lock(cache_mutex);
    if (auto it = cache.find(token); it != cache.end()) return it->second;
  }
  std::vector<int32_t> word;
  for (size_t i = 0; i < token.size(); ++i) {
    const auto b = static_cast<uint8_t>(token[i]);
    word.push_back(i + 1 < token.size() ? byte_id[b] : byte_eow_id[b]);
  }
  while (word.size() > 1) {
    const Merge* best = nullptr;
    size_t at = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      const auto it =
          merges.find((static_cast<uint64_t>(word[i]) << 32) | static_cast<uint32_t>(word[i + 1]));
      if (it != merges.end() && (!best || it->second.rank < best->rank)) {
        best = &it->second;
        at = i;
      }
    }
    if (!best) break;
    merge_best_pair(word, *best, word[at], word[at + 1]);
  }
  std::unique_lock lock(cache_mutex);
  if (cache.size() < kMaxCache) cache.emplace(token, word);
  return word;
}

// ---- Tokenizer ----------------------------------------------------------------

Tokenizer::Tokenizer() {
  // Built once per process and shared by every default-constructed Tokenizer.
  static const auto builtin =
      std::make_shared<Impl>(resources::bpe_merges(), "built-in bpe_simple_vocab_16e6.txt.gz");
  impl_ = builtin;
}

Tokenizer::Tokenizer(const std::string& merges_path)
    : Tokenizer(from_merges(read_file(merges_path, kMaxMergesBytes, "a merges file"), merges_path)) {}

Tokenizer Tokenizer::from_merges(std::string bytes, const std::string& what) {
  if (bytes.size() >= 2 && bytes[0] == '\x1f' && bytes[1] == '\x8b')
    bytes = resources::gunzip(bytes, what, kMaxMergesBytes);
  return Tokenizer(std::make_shared<Impl>(bytes, what));
}

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  U32 s = utf8_to_u32(text, "Tokenizer::encode: text", text);
  s = py_strip(html_unescape(html_unescape(s)));  // basic_clean, without ftfy
  s = lower(whitespace_clean(nfc(s)));
  std::vector<int64_t> ids;
  for (size_t i = 0; i < s.size();) {
    const size_t len = match_at(s, i);
    if (len == 0) {
      ++i;
      continue;
    }
    for (int32_t id : impl_->bpe(u32_to_utf8(std::u32string_view(s).substr(i, len))))
      ids.push_back(id);
    i += len;
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string bytes;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw Error("Tokenizer::decode: id " + std::to_string(id) +
                  " is outside the vocabulary [0, " + std::to_string(vocab_size()) + ")");
    if (id != impl_->sot && id != impl_->eot) bytes += impl_->decoded[static_cast<size_t>(id)];
  }
  const std::string text = u32_to_utf8(utf8_to_u32(bytes, nullptr));
  std::string out;
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, 4, "</w>") == 0) {
      out.push_back(' ');
      i += 4;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

at::Tensor Tokenizer::tokenize(const std::vector<std::string>& texts, int64_t context_length,
                               bool truncate) const {
  if (context_length < 1)
    throw Error("Tokenizer::tokenize: context_length " + std::to_string(context_length) +
                " must be at least 1");
  at::Tensor result = at::zeros({static_cast<int64_t>(texts.size()), context_length}, at::kLong);
  auto rows = result.accessor<int64_t, 2>();
  for (size_t i = 0; i < texts.size(); ++i) {
    std::vector<int64_t> ids = encode(texts[i]);
    ids.insert(ids.begin(), impl_->sot);
    ids.push_back(impl_->eot);
    if (static_cast<int64_t>(ids.size()) > context_length) {
      if (!truncate)
        throw Error("Tokenizer::tokenize: input \"" + abbreviate(texts[i]) + "\" is " +
                    std::to_string(ids.size()) +
                    " tokens with start/end, too long for context length " +
                    std::to_string(context_length) + " (pass truncate to cut it)");
      ids.resize(static_cast<size_t>(context_length));
      ids.back() = impl_->eot;
    }
    for (size_t j = 0; j < ids.size(); ++j)
      rows[static_cast<int64_t>(i)][static_cast<int64_t>(j)] = ids[j];
  }
  return result;
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->vocab.size()); }

}  // namespace vlmadapt
