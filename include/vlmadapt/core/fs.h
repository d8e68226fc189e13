// Small file helpers shared across the library.
#pragma once
#include <filesystem>
#include <string>

namespace vlmadapt {

// The whole file; throws vlmadapt::Error naming it if it cannot be read.
std::string read_file(const std::string& path);
// Writes `data` to path.tmp.<pid> then renames it over `path`, creating parent folders.
void write_file_atomic(const std::string& path, const std::string& data);
// Whether a folder / a regular file is there; false (not an exception) when it cannot be checked.
bool is_dir(const std::filesystem::path& path);
bool is_file(const std::filesystem::path& path);

}  // namespace vlmadapt
