// The CoOp split reader (split_zhou_*.json; src/data/dataset_coop.cpp) on arbitrary text.
// The first byte picks the dataset, whose class renames (EuroSAT, Caltech101) apply.
#include <iterator>

#include "data/dataset_readers.h"
#include "fuzz_util.h"

using namespace vlmadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const char* const kDatasets[] = {"oxford_pets", "caltech101",   "dtd",         "eurosat", "fgvc_aircraft",
                                          "flowers102",  "food101", "stanford_cars", "sun397",  "ucf101"};
  if (size == 0) return 0;
  const std::string dataset = kDatasets[data[0] % std::size(kDatasets)];
  fuzz::expect_only_errors([&] {
    Dataset d;
    vlmadapt::detail::parse_coop_split(fuzz::bytes(data + 1, size - 1), "split_zhou.json", dataset, d);
    for (const auto* split : {&d.train, &d.val, &d.test})
      for (const Item& item : *split)
        fuzz::require(item.label >= 0 && item.label < static_cast<int64_t>(d.classnames.size()),
                      "every label names a class");
  });
  return 0;
}
