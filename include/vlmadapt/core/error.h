// The one exception type of vlmadapt: every message names the file, key or value
// at fault and what was expected, so the CLI can print it and exit non-zero.
#pragma once
#include <stdexcept>
#include <string>

namespace vlmadapt {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace vlmadapt
