#include "cli/args.h"

#include <ostream>
#include <sstream>

namespace vlmadapt::cli {

Parsed parse_args(const std::vector<std::string>& args, const std::string& usage, po::options_description options,
                  const std::string& positional_name, std::ostream& out) {
  options.add_options()("help,h", "show this help");
  po::positional_options_description pos;
  if (!positional_name.empty()) pos.add(positional_name.c_str(), -1);
  Parsed p;
  po::store(po::command_line_parser(args).options(options).positional(pos).run(), p.vars);
  if (p.vars.count("help")) {
    out << "usage: " << usage << "\n\n" << options << "\n";
    p.help = true;
    return p;
  }
  po::notify(p.vars);
  return p;
}

std::vector<std::string> split_list(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string part; std::getline(ss, part, sep);) {
    const auto b = part.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) continue;
    const auto e = part.find_last_not_of(" \t\r\n");
    out.push_back(part.substr(b, e - b + 1));
  }
  return out;
}

}  // namespace vlmadapt::cli
