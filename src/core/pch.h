// Precompiled header of the library, the CLI and the tests: libtorch is large,
// so it is parsed once per build instead of once per translation unit.
#pragma once
#include <torch/torch.h>
#include <opencv2/core.hpp>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>
