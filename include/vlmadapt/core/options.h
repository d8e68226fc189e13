// Named options bound to fields of plain structs, with defaults and help text
// beside the struct that owns them (mlpack style). Recipes, the command line and
// `vlmadapt methods` all go through this one table.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace vlmadapt {

class OptionSet {
 public:
  struct Entry {
    std::string key;   // "section.name"
    std::string type;  // int, float, bool, string, list
    std::string help;
    std::function<void(const std::string&)> set;  // parses; throws vlmadapt::Error naming the key
    std::function<std::string()> get;             // current value as text; set(get()) is a no-op
    std::vector<std::string> choices;             // allowed values of a choice option (empty = any)
    std::optional<double> min, max;               // allowed range of a number option (range())
    bool min_open = false;                        // min itself excluded (above())
    // "one of a|b|c" or "in [0, 1]": what the option accepts, for help and errors.
    std::string accepted() const;
  };

  // Keys are "section.name"; with an empty section (the recipe's top-level keys) just "name".
  // Values are parsed as: int/int64 decimal integers; float any finite number; bool
  // true/false/1/0/yes/no/on/off (any case); string as is. Recipe values cannot hold '#'
  // (INI comment) nor leading/trailing blanks.
  explicit OptionSet(std::string section) : section_(std::move(section)) {}

  OptionSet& add(const std::string& name, int& field, const std::string& help);
  OptionSet& add(const std::string& name, int64_t& field, const std::string& help);
  OptionSet& add(const std::string& name, double& field, const std::string& help);
  OptionSet& add(const std::string& name, bool& field, const std::string& help);
  OptionSet& add(const std::string& name, std::string& field, const std::string& help);
  // A string that must be one of `choices` ("sgd", "adam", ...); other values are errors.
  OptionSet& add(const std::string& name, std::string& field, const std::string& help,
                 std::vector<std::string> choices);
  // An enum: its names come from `enum_names(E{})`, found beside the enum by argument-
  // dependent lookup and returning std::vector<std::pair<E, std::string>>, e.g.
  //   enum class Warmup { Constant, Linear, None };
  //   inline const auto& enum_names(Warmup) { static const std::vector<std::pair<Warmup, std::string>>
  //     n{{Warmup::Constant, "constant"}, ...}; return n; }
  // Other values are errors that list the names; help lists them too.
  template <class E, std::enable_if_t<std::is_enum_v<E>, int> = 0>
  OptionSet& add(const std::string& name, E& field, const std::string& help) {
    const auto& names = enum_names(E{});
    std::vector<std::string> choices;
    for (const auto& [value, text] : names) choices.push_back(text);
    return add_choice(name, help, std::move(choices),
                      [&field, &names](size_t i) { field = names[i].first; },
                      [&field, &names] {
                        for (const auto& [value, text] : names)
                          if (value == field) return text;
                        return std::string("?");
                      });
  }
  // Restricts the number option added last to [lo, hi]; a value outside is an error
  // naming the key and the range, and the field keeps its value.
  OptionSet& range(double lo, double hi);
  OptionSet& at_least(double lo);
  OptionSet& above(double lo);  // > lo
  // A '|'-separated list in recipes ("a photo of a {}.|art of the {}."): '|' rather than ','
  // so that prompt templates may contain commas. Items are trimmed; empty items are dropped.
  OptionSet& add(const std::string& name, std::vector<std::string>& field, const std::string& help);
  // '|'-separated numbers (a search grid); at least one.
  OptionSet& add(const std::string& name, std::vector<double>& field, const std::string& help);

  const std::string& section() const { return section_; }
  const std::vector<Entry>& entries() const { return entries_; }
  const Entry* find(const std::string& key) const;
  // Sets one "section.name" = value; throws vlmadapt::Error for an unknown key.
  void set(const std::string& key, const std::string& value) const;
  // Keeps an object that the entries point into alive as long as the set.
  void keep_alive(std::shared_ptr<void> owner) { owners_.push_back(std::move(owner)); }

 private:
  OptionSet& push(Entry entry);
  OptionSet& add_choice(const std::string& name, const std::string& help, std::vector<std::string> choices,
                        std::function<void(size_t)> set_index, std::function<std::string()> get);
  std::string section_;
  OptionSet& bounded(double lo, double hi, bool open_below);
  std::vector<Entry> entries_;
  std::vector<std::shared_ptr<void>> owners_;
};

// The name of an enum value (enum_names), e.g. for messages.
template <class E, std::enable_if_t<std::is_enum_v<E>, int> = 0>
std::string to_string(E value) {
  for (const auto& [v, text] : enum_names(E{}))
    if (v == value) return text;
  return "?";
}

// The known key closest to `key` by edit distance (for "did you mean" messages).
std::string nearest_key(const std::string& key, const std::vector<std::string>& known);

}  // namespace vlmadapt
