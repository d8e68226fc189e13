#include <vlmadapt/cli/cli.h>

#include <exception>
#include <filesystem>
#include <iostream>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/engine/distributed.h>

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
      // A distributed rank: the ranks waiting for this one will name it and its error.
      if (dist::world_started()) dist::world().report_failure(e.what());
      return 1;
    }
  }
  err << "vlmadapt: unknown command '" << args[0] << "'\n";
  usage(err);
  return 2;
}

int main(int argc, char** argv, const std::string& data_dir) {
  // An installed package may live under any prefix (cmake --install --prefix), so its
  // data is found from where the program is, not from the prefix it was configured with.
  namespace fs = std::filesystem;
  fs::path dir = data_dir;
  std::error_code ec;
  if (dir.empty()) dir = fs::read_symlink("/proc/self/exe", ec).parent_path() / VLMADAPT_DATADIR_FROM_BINDIR;
  if (!ec && fs::is_directory(dir / "models", ec))
    set_installed_models_dir((dir / "models").lexically_normal().string());
  return run(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr);
}

}  // namespace vlmadapt::cli
