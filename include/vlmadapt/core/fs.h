// Small file helpers shared across the library.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

namespace vlmadapt {

// The whole file; throws vlmadapt::Error naming it if it cannot be read.
std::string read_file(const std::string& path);
// The whole file, refused with a vlmadapt::Error naming it, `what` it is and the limit when
// it holds more than max_bytes ("<path>: 300000000 bytes, more than the limit of 256 MiB
// for a CoOp split file"). A regular file is checked by its size before any byte is read;
// a device or pipe, which has none, is read until it passes the limit.
std::string read_file(const std::string& path, uint64_t max_bytes, const std::string& what);
// A byte count as the limits are stated: "64 MiB" when a whole number of MiB, else "N bytes".
std::string byte_limit(uint64_t bytes);
// Writes `data` to path.tmp.<pid> then renames it over `path`, creating parent folders.
void write_file_atomic(const std::string& path, const std::string& data);
// Whether a folder / a regular file is there; false (not an exception) when it cannot be checked.
bool is_dir(const std::filesystem::path& path);
bool is_file(const std::filesystem::path& path);

// An exclusive lock on `dir`/.lock (flock), held as long as the object lives: a second
// writer into the same folder gets a vlmadapt::Error naming it instead of interleaving.
// The kernel drops the lock when a process dies, so a killed run leaves none behind.
class FolderLock {
 public:
  explicit FolderLock(const std::filesystem::path& dir);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  int fd_ = -1;
};

// Removes the temporary files that write_file_atomic leaves when a process is killed
// mid-write (<name>.tmp.<pid>) under `dir`; call it while holding the folder's lock.
// Returns how many were removed.
int remove_temporary_files(const std::filesystem::path& dir);

}  // namespace vlmadapt
