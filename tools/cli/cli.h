// The vlmadapt command line, callable in-process (tests) and from tools/main.cpp.
#pragma once
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

namespace vlmadapt::cli {

// Runs `vlmadapt ARGS...` (args excludes the program name). Returns the exit code;
// errors are printed to `err` and never escape as exceptions.
int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

// One subcommand: its name, one line of help, and its entry point.
struct Command {
  std::string name;
  std::string summary;
  std::function<int(const std::vector<std::string>& args, std::ostream& out, std::ostream& err)> main;
};

// Subcommands register themselves from their own files (tools/cli/cmd_*.cpp).
bool add_command(Command command);
const std::vector<Command>& commands();

}  // namespace vlmadapt::cli
