#include "cli/cli.h"

#include <exception>
#include <iostream>

#include <vlmadapt/core/error.h>

namespace vlmadapt::cli {

static std::vector<Command>& registry() {
  static std::vector<Command> all;
  return all;
}

bool add_command(Command command) {
  registry().push_back(std::move(command));
  return true;
}

const std::vector<Command>& commands() { return registry(); }

static void usage(std::ostream& os) {
  os << "usage: vlmadapt COMMAND [options]\n\ncommands:\n";
  for (const auto& c : commands()) os << "  " << c.name << std::string(12 - std::min<size_t>(11, c.name.size()), ' ') << c.summary << "\n";
  os << "\n'vlmadapt COMMAND --help' describes each.\n";
}

int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    usage(args.empty() ? err : out);
    return args.empty() ? 2 : 0;
  }
  for (const auto& c : commands()) {
    if (c.name != args[0]) continue;
    try {
      return c.main(std::vector<std::string>(args.begin() + 1, args.end()), out, err);
    } catch (const std::exception& e) {
      err << "vlmadapt " << c.name << ": error: " << e.what() << "\n";
      return 1;
    }
  }
  err << "vlmadapt: unknown command '" << args[0] << "'\n";
  usage(err);
  return 2;
}

}  // namespace vlmadapt::cli
