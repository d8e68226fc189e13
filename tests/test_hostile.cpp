// Hostile checkpoints and images are data, never code (issue 15 parts 6 and 8): each
// crafted input must give a vlmadapt::Error naming the file and what was expected, promptly,
// without running code, reading outside a storage or allocating what a header claims.
// The archives come from tests/data/hostile/make_hostile.py; the rest is crafted here.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/backbone/tokenizer.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/core/safetensors.h>
#include <vlmadapt/data/dataset.h>
#include <vlmadapt/data/image.h>
#include <vlmadapt/engine/recipe.h>

#include "backbone/hf_keys.h"
#include "backbone/torch_archive.h"
#include "backbone/torch_pickle.h"
#include "core/resources.h"
#include "data/dataset_readers.h"
#include "data/image_header.h"
#include "test_util.h"

namespace fs = std::filesystem;
namespace vt = vlmadapt::testing;
using vlmadapt::Error;

namespace {

std::string hostile(const std::string& name) { return (vt::source_dir() / "tests/data/hostile" / name).string(); }

void write(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Expects fn to throw a vlmadapt::Error whose message holds every one of `parts`.
template <class F>
void expect_error(F&& fn, std::initializer_list<std::string> parts) {
  const std::string msg = vt::error_of(fn);
  for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
}

constexpr const char* kMarker = "/tmp/vlmadapt_hostile_setstate_marker";  // see make_hostile.py

}  // namespace

// ---- TorchScript: no code runs --------------------------------------------------------

TEST(HostileTorchScript, SetstateThatWritesAFileNeverRuns) {
  fs::remove(kMarker);
  const auto sd = vlmadapt::read_torchscript_tensors(hostile("setstate_writes_file.pt"));
  EXPECT_FALSE(fs::exists(kMarker)) << "the archive's __setstate__ ran";
  // The plain module's parameter is read; the hostile object's custom state is not.
  ASSERT_EQ(sd.count("bias"), 1u);
  EXPECT_TRUE(sd.at("bias").equal(torch::tensor({0.5f, -1.5f})));
  expect_error([] { vlmadapt::read_checkpoint(hostile("setstate_writes_file.pt")); }, {"setstate_writes_file.pt"});
  EXPECT_FALSE(fs::exists(kMarker));
}

TEST(HostileTorchScript, SetstateThatLoopsReturnsPromptly) {
  const auto start = std::chrono::steady_clock::now();
  expect_error([] { vlmadapt::read_checkpoint(hostile("setstate_loops.pt")); },
               {"setstate_loops.pt", "unknown checkpoint layout"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

TEST(HostileTorchScript, RealArchivesReadAsBefore) {
  // Every parameter and buffer of the OpenAI archives, by name (test_loader checks values).
  const auto sd = vlmadapt::read_torchscript_tensors(vt::tiny_vit());
  EXPECT_EQ(sd.size(), 65u);
  EXPECT_EQ(sd.at("visual.conv1.weight").sizes(), (std::vector<int64_t>{128, 3, 8, 8}));
  EXPECT_EQ(vlmadapt::read_torchscript_tensors(vt::tiny_rn()).size(), 156u);
}

// ---- torch.save pickles: tensors only, inside their storages --------------------------

TEST(HostilePickle, ValidStateDictReads) {
  const auto sd = vlmadapt::read_torch_save_tensors(hostile("valid_state_dict.bin"));
  ASSERT_EQ(sd.size(), 2u);
  EXPECT_TRUE(sd.at("w").equal(torch::arange(6, torch::kFloat).reshape({2, 3})));
  EXPECT_TRUE(sd.at("v").equal(torch::tensor({2.0f, 4.0f})));
}

TEST(HostilePickle, TensorsOutsideTheirStorageAreRefused) {
  for (const char* name : {"tensor_larger_than_storage.bin", "stride_outside_storage.bin",
                           "offset_outside_storage.bin", "overflowing_shape.bin"})
    expect_error([&] { vlmadapt::read_torch_save_tensors(hostile(name)); }, {name, "does not fit its storage of 6"});
}

TEST(HostilePickle, CheckedViewBoundsEveryElement) {
  const auto storage = torch::arange(6, torch::kFloat);
  using vlmadapt::pickle::checked_view;
  EXPECT_TRUE(checked_view(storage, 1, {5}, {1}, "m").equal(torch::arange(1, 6, torch::kFloat)));
  EXPECT_EQ(checked_view(storage, 6, {0, 1000000}, {1, 1}, "m").numel(), 0);  // empty: any shape
  EXPECT_THROW(checked_view(storage, 2, {5}, {1}, "m"), Error);
  EXPECT_THROW(checked_view(storage, 0, {2, 3}, {3, -1}, "m"), Error);
  EXPECT_THROW(checked_view(storage, 0, {int64_t(1) << 62, 2}, {int64_t(1) << 62, int64_t(1) << 62}, "m"), Error);
}

TEST(HostilePickle, ShortStorageRecordIsRefused) {
  expect_error([] { vlmadapt::read_torch_save_tensors(hostile("storage_record_short.bin")); },
               {"storage_record_short.bin", "declares 1000000 elements", "holds 24 bytes"});
}

TEST(HostilePickle, CodeGlobalsAreRefused) {
  fs::remove(kMarker);
  expect_error([] { vlmadapt::read_torch_save_tensors(hostile("evil_global.bin")); },
               {"evil_global.bin", "global 'posix.system' is not allowed"});
  EXPECT_FALSE(fs::exists(kMarker));
}

TEST(HostilePickle, DamagedArchivesAreRefused) {
  expect_error([] { vlmadapt::read_torch_save_tensors(hostile("bad_crc.bin")); }, {"bad_crc.bin", "CRC-32"});
  expect_error([] { vlmadapt::read_torch_save_tensors(hostile("compressed_record.bin")); },
               {"compressed_record.bin", "compressed"});
  // Cut short: every prefix of a valid archive is an error, never a crash.
  std::ifstream in(hostile("valid_state_dict.bin"), std::ios::binary);
  const std::string whole((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto dir = vt::temp_dir("hostile_cut");
  for (size_t len = 8; len < whole.size(); len += 37) {
    const auto p = dir / ("cut" + std::to_string(len) + ".bin");
    write(p, whole.substr(0, len));
    EXPECT_THROW(vlmadapt::read_checkpoint(p.string()), Error) << len;
  }
  fs::remove_all(dir);
}

TEST(HostilePickle, PickleLimits) {
  auto load = [](const std::string&, at::ScalarType, int64_t) -> at::Tensor { return {}; };
  auto parse = [&](const std::string& bytes) { vlmadapt::pickle::Pickle p(bytes, "mem.pkl", load); };
  // 100 nested lists: ']' then (']' 'a') appends... built as EMPTY_LIST x100 then APPEND x99.
  std::string nested = "\x80\x02" + std::string(100, ']') + std::string(99, 'a') + ".";
  expect_error([&] { parse(nested); }, {"mem.pkl", "nested deeper than the limit of 64"});
  expect_error([&] { parse("\x80\x02}q\x00"); }, {"mem.pkl", "truncated pickle"});
  expect_error([&] { parse(std::string("\x80\x02i", 3)); }, {"mem.pkl", "not allowed"});  // INST names code
  expect_error([&] { parse("\x80\x02h\x05."); }, {"memo entry 5"});
}

// Found by fuzzing (tests/fuzz/fuzz_torch_save, fuzz_torchscript): libtorch's zip reader
// allocates the size a record's directory entry claims before reading it, and reads the
// version record as it opens. Every entry is now checked first; the messages name the check,
// as the archives were also refused before, but only after allocating 2 and 4 GiB.
TEST(HostileArchive, DirectoryEntriesAreCheckedBeforeAnyRecordIsRead) {
  expect_error([] { vlmadapt::read_torch_save_tensors(hostile("record_size_over_file.bin")); },
               {"record_size_over_file.bin", "record 'archive/data/0' is stored, but its sizes differ (2147483648 and 24"});
  expect_error([] { vlmadapt::read_checkpoint(hostile("version_size_over_file.bin")); },
               {"version_size_over_file.bin", "record 'archive/version' is stored, but its sizes differ"});
  // Records sharing bytes, and names miniz would confuse (it ignores case).
  expect_error([] { vlmadapt::read_torch_save_tensors(hostile("overlapping_records.bin")); },
               {"overlapping_records.bin", "records 'data/0' and 'data/1' overlap"});
  expect_error([] { vlmadapt::read_torch_save_tensors(hostile("duplicate_record.bin")); },
               {"duplicate_record.bin", "record 'archive/DATA/0' appears twice"});
  // The same from bytes in memory, as the fuzz targets read them.
  std::ifstream in(hostile("record_size_over_file.bin"), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  expect_error([&] { vlmadapt::read_torch_save_tensors_bytes(bytes, "mem.bin"); }, {"mem.bin", "sizes differ"});
  std::ifstream valid(hostile("valid_state_dict.bin"), std::ios::binary);
  const std::string ok((std::istreambuf_iterator<char>(valid)), std::istreambuf_iterator<char>());
  EXPECT_EQ(vlmadapt::read_torch_save_tensors_bytes(ok, "mem.bin").size(), 2u);
}

// ---- safetensors: checked before allocation --------------------------------------------

namespace {
std::string safetensors(const nlohmann::json& header, size_t data_bytes) {
  const std::string head = header.dump();
  std::string out(8, '\0');
  const uint64_t n = head.size();
  std::memcpy(out.data(), &n, 8);
  return out + head + std::string(data_bytes, '\0');
}
}  // namespace

TEST(HostileSafetensors, ShapesOffsetsAndLimits) {
  const auto dir = vt::temp_dir("hostile_st");
  auto check = [&](const std::string& name, const std::string& bytes, std::initializer_list<std::string> parts) {
    write(dir / name, bytes);
    expect_error([&] { vlmadapt::read_safetensors((dir / name).string()); }, parts);
  };
  using nlohmann::json;
  const int64_t big = int64_t(1) << 32;
  check("huge.safetensors", safetensors({{"t", {{"dtype", "F32"}, {"shape", {big, big}}, {"data_offsets", {0, 0}}}}}, 0),
        {"huge.safetensors", "needs more bytes than the file's 0 data bytes"});
  check("dims.safetensors", safetensors({{"t", {{"dtype", "F32"}, {"shape", std::vector<int64_t>(17, 1)}, {"data_offsets", {0, 4}}}}}, 4),
        {"dims.safetensors", "17 dimensions, over the limit of 16"});
  check("range.safetensors", safetensors({{"t", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}}}, 8),
        {"range.safetensors", "outside the file"});
  check("overlap.safetensors",
        safetensors({{"a", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}},
                     {"b", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {8, 24}}}}}, 24),
        {"overlap.safetensors", "overlap"});
  std::string header_len(8, '\0');
  const uint64_t n = (uint64_t(16) << 20) + 1;
  std::memcpy(header_len.data(), &n, 8);
  check("header.safetensors", header_len + std::string(n, ' '), {"header.safetensors", "over the limit of 16777216"});
  // Zero-size tensors of any width are fine and cost nothing.
  write(dir / "empty.safetensors", safetensors({{"t", {{"dtype", "F32"}, {"shape", {0, big}}, {"data_offsets", {0, 0}}}}}, 0));
  EXPECT_EQ(vlmadapt::read_safetensors((dir / "empty.safetensors").string()).at("t").numel(), 0);
  fs::remove_all(dir);
}

// ---- architecture values from files -----------------------------------------------------

TEST(HostileConfig, HuggingFaceHeadsAreValidated) {
  const auto dir = vt::temp_dir("hostile_hf");
  const auto src = vt::fixtures() / "clip" / "tiny_vit";
  fs::create_symlink(src / "model_hf.safetensors", dir / "model_hf.safetensors");
  std::ifstream in(src / "model_hf.config.json");
  const auto config = nlohmann::json::parse(in);
  for (int heads : {0, 3, -2}) {
    auto bad = config;
    bad["vision_config"]["num_attention_heads"] = heads;
    write(dir / "model_hf.config.json", bad.dump());
    const std::string msg = vt::error_of([&] { vlmadapt::read_checkpoint((dir / "model_hf.safetensors").string()); });
    EXPECT_NE(msg.find("model_hf"), std::string::npos) << msg;
    EXPECT_NE(msg.find(heads == 3 ? "vision heads > 0 dividing the vision width" : "num_attention_heads"),
              std::string::npos) << msg;
  }
  fs::remove_all(dir);
}

TEST(HostileConfig, ValidateClipConfig) {
  auto c = vlmadapt::ClipConfig::named("ViT-B/16");
  EXPECT_NO_THROW(vlmadapt::validate_clip_config(c, "f"));
  auto bad = c;
  bad.vision_patch_size = 15;
  expect_error([&] { vlmadapt::validate_clip_config(bad, "f.pt"); }, {"f.pt", "patch size dividing"});
  bad = c;
  bad.transformer_layers = 0;
  expect_error([&] { vlmadapt::validate_clip_config(bad, "f.pt"); }, {"f.pt", "text layers in 1.."});
}

// ---- images: size checked from the header before decoding -------------------------------

namespace {
std::string png_header(uint32_t w, uint32_t h) {
  std::string b("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16);
  for (uint32_t v : {w, h})
    for (int s = 24; s >= 0; s -= 8) b += static_cast<char>((v >> s) & 0xFF);
  return b + std::string("\x08\x02\0\0\0\0\0\0\0", 9);
}
}  // namespace

TEST(HostileImage, DecompressionBombsAreRefusedBeforeDecoding) {
  expect_error([] { vlmadapt::decode_image(hostile("strip_1x1000000.png")); },
               {"strip_1x1000000.png", "aspect ratio over the limit of 100:1"});
  expect_error([] { vlmadapt::decode_image_bytes(png_header(20000, 20000), "bomb.png"); },
               {"bomb.png", "20000 x 20000", "over the limit of 89478485 pixels"});
  EXPECT_EQ(vlmadapt::read_image_size(png_header(640, 480), "ok.png").width, 640u);
  // A JPEG's size is in its frame header, after other segments.
  const std::string jpeg("\xFF\xD8\xFF\xE0\x00\x04\x00\x00\xFF\xC0\x00\x0B\x08\x4E\x20\x4E\x20\x01\x01\x11\x00", 21);
  expect_error([&] { vlmadapt::decode_image_bytes(jpeg, "bomb.jpg"); }, {"bomb.jpg", "20000 x 20000"});
}

// Found by fuzzing (tests/fuzz/fuzz_image): OpenCV's PPM/PGM reader consumes the byte after
// a number whatever it is and ends comments at '\r' too, so these headers declared a size
// within the limits to the header check and decoded to 113 x 1 and 1 x 150 pixels.
TEST(HostileImage, NetpbmHeadersAreReadAsTheDecoderReadsThem) {
  const std::string hash_after_number = "P5\n113#1\n113\n" + std::string(200, '\x7f');
  expect_error([&] { vlmadapt::decode_image_bytes(hash_after_number, "hash.pgm"); },
               {"hash.pgm", "corrupt PPM/PGM header"});
  const std::string comment_to_cr = "P5 1 #\r150\n1 255\n" + std::string(150, '\x01');
  expect_error([&] { vlmadapt::decode_image_bytes(comment_to_cr, "cr.pgm"); },
               {"cr.pgm", "1 x 150", "aspect ratio over the limit of 100:1"});
  const std::string plain = "P5\n# a comment\n3 2\n255\n" + std::string(6, '\x40');
  const auto image = vlmadapt::decode_image_bytes(plain, "ok.pgm");
  EXPECT_EQ(image.pixels.cols, 3);
  EXPECT_EQ(image.pixels.rows, 2);
}

// Found by fuzzing too: a TIFF declaring its width twice, 720,896 then 20 pixels. The header
// check took the last, libtiff the first, and OpenCV decoded 720,896 x 17 pixels. In a JPEG,
// FF 00 is no marker to libjpeg, which looks further, while the walk read a length there.
TEST(HostileImage, TiffAndJpegHeadersAreReadAsTheDecoderReadsThem) {
  expect_error([] { vlmadapt::decode_image(hostile("tiff_width_twice.tif")); },
               {"tiff_width_twice.tif", "TIFF declares its image width twice"});
  const std::string stuffed("\xFF\xD8\xFF\x00\x00\x04\xFF\xC0\x00\x0B\x08\x00\x10\x00\x10\x01\x01\x11\x00", 19);
  expect_error([&] { vlmadapt::decode_image_bytes(stuffed, "stuffed.jpg"); }, {"stuffed.jpg", "FF 00"});
  for (const char* name : {"rgba_20x17.tif", "rgb_33x21.jpg"})  // real files read as before
    EXPECT_NO_THROW(vlmadapt::decode_image((vt::source_dir() / "tests/data/images" / name).string())) << name;
}

// ---- the CLI: a non-zero exit and a message, never a signal or a hang --------------------

namespace {
struct Exit {
  bool exited = false;
  int code = -1;
  std::string output;
};
Exit run_cli(const std::vector<std::string>& args, int timeout_s) {
  const auto out = fs::temp_directory_path() / ("vlmadapt_hostile_cli_" + std::to_string(::getpid()));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<std::string> all{vt::cli_path()};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  Exit r;
  if (posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) return r;
  posix_spawn_file_actions_destroy(&actions);
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.output = "<timed out>";
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  r.exited = WIFEXITED(status);
  r.code = r.exited ? WEXITSTATUS(status) : -WTERMSIG(status);
  std::ifstream in(out);
  r.output.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  fs::remove(out);
  return r;
}
}  // namespace

TEST(HostileCli, InfoExitsWithAMessageNeverASignal) {
  fs::remove(kMarker);
  for (const char* name : {"setstate_writes_file.pt", "setstate_loops.pt", "tensor_larger_than_storage.bin",
                           "storage_record_short.bin", "bad_crc.bin", "evil_global.bin"}) {
    const Exit r = run_cli({"info", hostile(name)}, 60);
    EXPECT_TRUE(r.exited) << name << ": " << r.output;
    EXPECT_NE(r.code, 0) << name;
    EXPECT_NE(r.output.find(name), std::string::npos) << r.output;
  }
  EXPECT_FALSE(fs::exists(kMarker));
}

// Gzip input (IDX files, a tokenizer's merges) is inflated up to a stated limit: a bomb
// stops at the limit with an error naming the file, before it fills memory.
TEST(Hostile, GunzipStopsAtItsLimitNamingTheFile) {
  const std::string gz = vlmadapt::read_file((vt::source_dir() / "third_party/clip/bpe_simple_vocab_16e6.txt.gz").string());
  const std::string whole = vlmadapt::resources::gunzip(gz, "vocab.gz");
  ASSERT_GT(whole.size(), 1000000u);
  EXPECT_EQ(vlmadapt::resources::gunzip(gz, "vocab.gz", whole.size()), whole);  // exactly at the limit: fine
  const auto message = vt::error_of([&] { vlmadapt::resources::gunzip(gz, "vocab.gz", whole.size() - 1); });
  EXPECT_NE(message.find("vocab.gz: decompresses to more than " + std::to_string(whole.size() - 1) + " bytes"),
            std::string::npos)
      << message;
}

// ---- Text readers: files over their size limit are refused before they are read ---------

namespace {

// A file of `size` zero bytes that takes no disk space (the limits are 1 MiB to 256 MiB).
std::string sparse_file(const fs::path& p, uint64_t size) {
  std::ofstream(p, std::ios::binary).put('\0');
  fs::resize_file(p, size);
  return p.string();
}

}  // namespace

TEST(HostileLimits, BoundedReadNamesTheFileAndTheLimit) {
  const auto dir = vt::temp_dir("hostile_read_limit");
  write(dir / "ten", "0123456789");
  EXPECT_EQ(vlmadapt::read_file((dir / "ten").string(), 10, "a test file"), "0123456789");  // at the limit
  expect_error([&] { vlmadapt::read_file((dir / "ten").string(), 9, "a test file"); },
               {(dir / "ten").string(), "10 bytes", "more than the limit of 9 bytes for a test file"});
  const std::string big = sparse_file(dir / "big", (uint64_t(1) << 30) + 1);
  expect_error([&] { vlmadapt::read_file(big, uint64_t(1) << 30, "a test file"); },
               {big, "1073741825 bytes", "limit of 1024 MiB"});
  // A device has no size: reading stops past the limit.
  expect_error([&] { vlmadapt::read_file("/dev/zero", uint64_t(1) << 20, "a test file"); },
               {"/dev/zero", "limit of 1 MiB for a test file"});
  fs::remove_all(dir);
}

TEST(HostileLimits, DatasetFilesOverTheirLimitAreRefusedNamingTheFile) {
  using vlmadapt::detail::kMaxLinesFileBytes;
  using vlmadapt::detail::kMaxSplitFileBytes;
  const auto dir = vt::temp_dir("hostile_dataset_limits");
  vlmadapt::DataOptions coop;
  coop.dataset = "oxford_pets";
  coop.split_file = sparse_file(dir / "split_zhou_OxfordPets.json", kMaxSplitFileBytes + 1);
  expect_error([&] { vlmadapt::open_dataset(coop); }, {coop.split_file, "limit of 256 MiB for a CoOp split file"});

  vlmadapt::DataOptions list;
  list.dataset = "list";
  list.split_file = (dir / "images.txt").string();
  write(list.split_file, "a.png,0\n");
  list.classnames_file = sparse_file(dir / "classnames.txt", kMaxLinesFileBytes + 1);
  expect_error([&] { vlmadapt::open_dataset(list); }, {list.classnames_file, "limit of 64 MiB"});
  write(list.classnames_file, "cat\n");
  sparse_file(list.split_file, kMaxSplitFileBytes + 1);
  expect_error([&] { vlmadapt::open_dataset(list); }, {list.split_file, "limit of 256 MiB for a list of images"});

  write(list.split_file, "a.png,0\n");
  const vlmadapt::Dataset full = vlmadapt::open_dataset(list);
  const std::string saved = sparse_file(dir / "split.json", kMaxSplitFileBytes + 1);
  expect_error([&] { vlmadapt::load_split(full, saved); }, {saved, "limit of 256 MiB for a saved split"});
  fs::remove_all(dir);
}

TEST(HostileLimits, RecipesAreBoundedInSizeAndInFilesRead) {
  const auto dir = vt::temp_dir("hostile_recipe_limits");
  const std::string big = sparse_file(dir / "big.ini", vlmadapt::kMaxRecipeBytes + 1);
  expect_error([&] { vlmadapt::load_recipe({big}); }, {big, "limit of 1 MiB for a recipe file"});
  write(dir / "includes_big.ini", "include = big.ini\n");
  expect_error([&] { vlmadapt::load_recipe({(dir / "includes_big.ini").string()}); },
               {"includes_big.ini", big, "limit of 1 MiB"});

  // A diamond: d0 includes d1 twice, d1 includes d2 twice, ...: no cycle, but 2^9 reads.
  for (int i = 0; i < 9; ++i) {
    const std::string next = "d" + std::to_string(i + 1) + ".ini";
    write(dir / ("d" + std::to_string(i) + ".ini"), "include = " + next + "|" + next + "\n");
  }
  write(dir / "d9.ini", "[train]\nlr = 0.5\n");
  expect_error([&] { vlmadapt::load_recipe({(dir / "d0.ini").string()}); },
               {dir.string(), ": include ", "more than the limit of 256 recipe files read for one recipe"});
  // Ending at d5 the same diamond reads 1 + 2 + ... + 32 = 63 files.
  write(dir / "d5.ini", "[train]\nlr = 0.5\n");
  EXPECT_DOUBLE_EQ(vlmadapt::load_recipe({(dir / "d0.ini").string()}).train.lr, 0.5);
  fs::remove_all(dir);
}

TEST(HostileLimits, OtherTextReadersAreBounded) {
  const auto dir = vt::temp_dir("hostile_text_limits");
  const std::string merges = sparse_file(dir / "merges.txt", vlmadapt::Tokenizer::kMaxMergesBytes + 1);
  expect_error([&] { vlmadapt::Tokenizer t(merges); }, {merges, "limit of 64 MiB for a merges file"});
  const std::string config = sparse_file(dir / "config.json", vlmadapt::kMaxHfConfigBytes + 1);
  expect_error([&] { vlmadapt::read_hf_config(config); }, {config, "limit of 16 MiB"});
  fs::remove_all(dir);
}
