// The vlmadapt command line, callable in-process (tests) and as a program's main():
// tools/main.cpp, and the executables vlmadapt_add_cli builds with more methods
// (cmake/vlmadaptCli.cmake, installed as the library vlmadapt::cli).
#pragma once
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

namespace vlmadapt::cli {

// Runs `vlmadapt ARGS...` (args excludes the program name). Returns the exit code;
// errors are printed to `err` and never escape as exceptions.
int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

// A whole vlmadapt program: `int main(int argc, char** argv) { return vlmadapt::cli::main(argc, argv); }`.
// data_dir is the installed package's share/vlmadapt, where `default` finds the built-in
// model; empty means <the executable's folder>/../share/vlmadapt (an installed vlmadapt).
int main(int argc, char** argv, const std::string& data_dir = "");

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
