// Command-line parsing for the subcommands (Boost.Program_options), with --help.
#pragma once
#include <boost/program_options.hpp>

#include <iosfwd>
#include <string>
#include <vector>

namespace vlmadapt::cli {

namespace po = boost::program_options;

struct Parsed {
  po::variables_map vars;
  bool help = false;  // --help was given and printed: the command should return 0
};

// Parses `args` against `options` (+ --help) and the positional name, if any.
// Unknown options and bad values throw po::error, which run() reports as an error.
Parsed parse_args(const std::vector<std::string>& args, const std::string& usage, po::options_description options,
                  const std::string& positional_name, std::ostream& out);

// "a,b,c" -> {"a","b","c"} (trimmed, empty parts dropped).
std::vector<std::string> split_list(const std::string& text, char sep = ',');

}  // namespace vlmadapt::cli
