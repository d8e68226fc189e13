#include "resources.h"

#include <zlib.h>

#include <vlmadapt/core/error.h>

// Embed a file of third_party/clip into .rodata. VLMADAPT_RESOURCE_DIR is set by CMake.
#define VLMADAPT_INCBIN(sym, file)                                                      \
  __asm__(".section .rodata\n.global " #sym "_begin\n.balign 16\n" #sym "_begin:\n"     \
          ".incbin \"" VLMADAPT_RESOURCE_DIR "/" file "\"\n.global " #sym "_end\n" #sym \
          "_end:\n.byte 0\n.previous\n");                                               \
  extern "C" const char sym##_begin[];                                                  \
  extern "C" const char sym##_end[];

VLMADAPT_INCBIN(vlmadapt_bpe_gz, "bpe_simple_vocab_16e6.txt.gz")
VLMADAPT_INCBIN(vlmadapt_datasets_json, "datasets_prompts.json")
VLMADAPT_INCBIN(vlmadapt_imagenet_json, "imagenet_prompts.json")

namespace vlmadapt::resources {

std::string gunzip(std::string_view gz, const std::string& what, size_t max_bytes) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw Error("gunzip: zlib init failed for " + what);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
  zs.avail_in = static_cast<uInt>(gz.size());
  std::string out;
  char buf[1 << 16];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&zs);
      throw Error(what + ": not a valid gzip stream (zlib error " + std::to_string(rc) + ")");
    }
    if (out.size() + (sizeof buf - zs.avail_out) > max_bytes) {
      inflateEnd(&zs);
      throw Error(what + ": decompresses to more than " + std::to_string(max_bytes) + " bytes, the limit (a gzip bomb?)");
    }
    out.append(buf, sizeof buf - zs.avail_out);
    if (rc == Z_OK && zs.avail_in == 0 && zs.avail_out != 0) {
      inflateEnd(&zs);
      throw Error(what + ": truncated gzip stream");
    }
  }
  inflateEnd(&zs);
  return out;
}

const std::string& bpe_merges() {
  static const std::string text = gunzip(
      std::string_view(vlmadapt_bpe_gz_begin, vlmadapt_bpe_gz_end - vlmadapt_bpe_gz_begin),
      "built-in bpe_simple_vocab_16e6.txt.gz");
  return text;
}

std::string_view datasets_prompts_json() {
  return {vlmadapt_datasets_json_begin,
          static_cast<size_t>(vlmadapt_datasets_json_end - vlmadapt_datasets_json_begin)};
}

std::string_view imagenet_prompts_json() {
  return {vlmadapt_imagenet_json_begin,
          static_cast<size_t>(vlmadapt_imagenet_json_end - vlmadapt_imagenet_json_begin)};
}

}  // namespace vlmadapt::resources
