// OptionSet: typed parsing and printing of named options. Printing is the inverse of
// parsing (set(get()) changes nothing), which is what makes Recipe::to_ini round-trip.
#include <vlmadapt/core/options.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>

#include <vlmadapt/core/error.h>

namespace vlmadapt {
namespace {

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

[[noreturn]] void bad_value(const std::string& key, const std::string& expected,
                            const std::string& value) {
  throw Error(key + ": expected " + expected + ", got '" + value + "'");
}

// Whole-string integer parse; from_chars does not take '+', so a leading '+' is skipped.
int64_t parse_int(const std::string& key, const std::string& text, int64_t lo, int64_t hi) {
  const std::string s = trim(text);
  const char* begin = s.data();
  const char* end = s.data() + s.size();
  if (begin != end && *begin == '+') ++begin;
  int64_t value = 0;
  const auto [ptr, ec] = std::from_chars(begin, end, value);
  if (s.empty() || ec == std::errc::invalid_argument || ptr != end) bad_value(key, "an integer", text);
  if (ec == std::errc::result_out_of_range || value < lo || value > hi)
    bad_value(key, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", text);
  return value;
}

double parse_double(const std::string& key, const std::string& text) {
  const std::string s = trim(text);
  const char* begin = s.data();
  const char* end = s.data() + s.size();
  if (begin != end && *begin == '+') ++begin;
  double value = 0;
  const auto [ptr, ec] = std::from_chars(begin, end, value);
  if (s.empty() || ec != std::errc() || ptr != end || !std::isfinite(value))
    bad_value(key, "a number", text);
  return value;
}

bool parse_bool(const std::string& key, const std::string& text) {
  const std::string s = lower(trim(text));
  if (s == "true" || s == "1" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "0" || s == "no" || s == "off") return false;
  bad_value(key, "a boolean (true/false, 1/0, yes/no, on/off)", text);
}

// Shortest text that parses back to the same double (to_chars without a precision
// guarantees it): plain decimals in the usual range (0.0005, 100), else 1e-05.
std::string format_double(double value) {
  char buf[400];
  const double magnitude = std::fabs(value);
  const bool fixed = magnitude == 0 || (magnitude >= 1e-4 && magnitude < 1e15);
  const auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, value,
                                       fixed ? std::chars_format::fixed : std::chars_format::scientific);
  return ec == std::errc() ? std::string(buf, ptr) : std::to_string(value);
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t bar = std::min(text.find('|', start), text.size());
    std::string item = trim(text.substr(start, bar - start));
    if (!item.empty()) items.push_back(std::move(item));
    start = bar + 1;
  }
  return items;
}

std::string join_list(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? "|" : "") + items[i];
  return out;
}

std::string join_choices(const std::vector<std::string>& choices) { return join_list(choices); }

template <class Int>
void fill_int(OptionSet::Entry& e, Int& field) {
  e.type = "int";
  e.set = [key = e.key, &field](const std::string& v) {
    field = static_cast<Int>(parse_int(key, v, std::numeric_limits<Int>::min(),
                                       std::numeric_limits<Int>::max()));
  };
  e.get = [&field] { return std::to_string(field); };
}

}  // namespace

OptionSet& OptionSet::push(Entry entry) {
  if (find(entry.key)) throw Error(entry.key + ": option declared twice");
  entries_.push_back(std::move(entry));
  return *this;
}

// Builds the key of `name` and fills in the fields every entry shares.
static OptionSet::Entry finish(OptionSet::Entry e, const std::string& section,
                               const std::string& name, const std::string& help) {
  e.key = section.empty() ? name : section + "." + name;
  e.help = help;
  return e;
}

OptionSet& OptionSet::add(const std::string& name, int& field, const std::string& help) {
  Entry e = finish({}, section_, name, help);
  fill_int(e, field);
  return push(std::move(e));
}

OptionSet& OptionSet::add(const std::string& name, int64_t& field, const std::string& help) {
  Entry e = finish({}, section_, name, help);
  fill_int(e, field);
  return push(std::move(e));
}

OptionSet& OptionSet::add(const std::string& name, double& field, const std::string& help) {
  Entry e = finish({}, section_, name, help);
  e.type = "float";
  e.set = [key = e.key, &field](const std::string& v) { field = parse_double(key, v); };
  e.get = [&field] { return format_double(field); };
  return push(std::move(e));
}

OptionSet& OptionSet::add(const std::string& name, bool& field, const std::string& help) {
  Entry e = finish({}, section_, name, help);
  e.type = "bool";
  e.set = [key = e.key, &field](const std::string& v) { field = parse_bool(key, v); };
  e.get = [&field] { return std::string(field ? "true" : "false"); };
  return push(std::move(e));
}

OptionSet& OptionSet::add(const std::string& name, std::string& field, const std::string& help) {
  Entry e = finish({}, section_, name, help);
  e.type = "string";
  // Trimmed so that a value set from the command line matches one read from an INI file.
  e.set = [&field](const std::string& v) { field = trim(v); };
  e.get = [&field] { return field; };
  return push(std::move(e));
}

OptionSet& OptionSet::add(const std::string& name, std::string& field, const std::string& help,
                          std::vector<std::string> choices) {
  auto names = std::make_shared<std::vector<std::string>>(choices);
  return add_choice(name, help, std::move(choices), [&field, names](size_t i) { field = (*names)[i]; },
                    [&field] { return field; });
}

OptionSet& OptionSet::add_choice(const std::string& name, const std::string& help, std::vector<std::string> choices,
                                 std::function<void(size_t)> set_index, std::function<std::string()> get) {
  Entry e = finish({}, section_, name, help);
  e.type = "choice";
  e.choices = std::move(choices);
  e.set = [key = e.key, choices = e.choices, set_index](const std::string& v) {
    const std::string s = trim(v);
    const auto it = std::find(choices.begin(), choices.end(), s);
    if (it == choices.end()) bad_value(key, "one of " + join_choices(choices), v);
    set_index(static_cast<size_t>(it - choices.begin()));
  };
  e.get = std::move(get);
  return push(std::move(e));
}

std::string OptionSet::Entry::accepted() const {
  if (!choices.empty()) return "one of " + join_choices(choices);
  if (!min && !max) return "";
  const auto bound = [](const std::optional<double>& b, const char* none) { return b ? format_double(*b) : std::string(none); };
  return std::string(min_open ? "in (" : "in [") + bound(min, "-inf") + ", " + bound(max, "inf") + "]";
}

OptionSet& OptionSet::range(double lo, double hi) { return bounded(lo, hi, false); }

OptionSet& OptionSet::above(double lo) { return bounded(lo, std::numeric_limits<double>::infinity(), true); }

OptionSet& OptionSet::bounded(double lo, double hi, bool open_below) {
  if (entries_.empty() || (entries_.back().type != "int" && entries_.back().type != "float"))
    throw Error(section_ + ": range() follows the add() of a number option");
  Entry& e = entries_.back();
  if (lo > -std::numeric_limits<double>::infinity()) e.min = lo;
  if (hi < std::numeric_limits<double>::infinity()) e.max = hi;
  e.min_open = open_below;
  e.set = [key = e.key, parse = e.set, get = e.get, lo, hi, open_below, accepted = e.accepted()](const std::string& v) {
    const std::string old = get();
    parse(v);
    const double x = std::stod(get());
    if (x < lo || (open_below && x == lo) || x > hi) {
      parse(old);
      bad_value(key, "a number " + accepted, v);
    }
  };
  return *this;
}

OptionSet& OptionSet::at_least(double lo) { return range(lo, std::numeric_limits<double>::infinity()); }

OptionSet& OptionSet::add(const std::string& name, std::vector<std::string>& field,
                          const std::string& help) {
  Entry e = finish({}, section_, name, help);
  e.type = "list";
  e.set = [&field](const std::string& v) { field = split_list(v); };
  e.get = [&field] { return join_list(field); };
  return push(std::move(e));
}

OptionSet& OptionSet::add(const std::string& name, std::vector<double>& field, const std::string& help) {
  Entry e = finish({}, section_, name, help);
  e.type = "numbers";
  e.set = [key = e.key, &field](const std::string& v) {
    std::vector<double> values;
    for (const auto& item : split_list(v)) values.push_back(parse_double(key, item));
    if (values.empty()) bad_value(key, "a '|'-separated list of numbers", v);
    field = values;
  };
  e.get = [&field] {
    std::vector<std::string> items;
    for (double d : field) items.push_back(format_double(d));
    return join_list(items);
  };
  return push(std::move(e));
}

const OptionSet::Entry* OptionSet::find(const std::string& key) const {
  for (const auto& e : entries_)
    if (e.key == key) return &e;
  return nullptr;
}

void OptionSet::set(const std::string& key, const std::string& value) const {
  if (const Entry* e = find(key)) return e->set(value);
  std::vector<std::string> known;
  for (const auto& e : entries_) known.push_back(e.key);
  std::string message = "unknown key '" + key + "'";
  const std::string near = nearest_key(key, known);
  if (!near.empty()) message += "; did you mean '" + near + "'?";
  throw Error(message);
}

// Optimal-string-alignment distance: Levenshtein plus adjacent transpositions, so that
// "rl" is one edit from "lr". Only three rows of the table are kept (a transposition looks
// two rows back): an unknown key is compared with every known one, hundreds of them.
#if defined(__clang__)
// Not parsing: under libFuzzer its comparisons would only add string-distance noise to
// the coverage of the recipe reader, and cost most of each try (tests/fuzz/).
__attribute__((no_sanitize("coverage")))
#endif
static size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> two_back(b.size() + 1), prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      cur[j] = std::min(std::min(prev[j], cur[j - 1]) + 1, prev[j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        cur[j] = std::min(cur[j], two_back[j - 2] + 1);
    }
    std::swap(two_back, prev);  // rows i-1 and i become the two before the next
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string nearest_key(const std::string& key, const std::vector<std::string>& known) {
  std::string best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const auto& candidate : known) {  // first of equals wins: callers list keys in order
    // The distance is at least the difference in length: such a candidate cannot win.
    const size_t at_least = key.size() > candidate.size() ? key.size() - candidate.size() : candidate.size() - key.size();
    if (at_least >= best_distance) continue;
    const size_t d = edit_distance(key, candidate);
    if (d < best_distance) best = candidate, best_distance = d;
  }
  return best;
}

}  // namespace vlmadapt
