// Small file helpers shared across the library.
#pragma once
#include <string>

namespace vlmadapt {

// The whole file; throws vlmadapt::Error naming it if it cannot be read.
std::string read_file(const std::string& path);
// Writes `data` to path.tmp.<pid> then renames it over `path`, creating parent folders.
void write_file_atomic(const std::string& path, const std::string& data);

}  // namespace vlmadapt
