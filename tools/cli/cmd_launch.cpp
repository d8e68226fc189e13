// vlmadapt launch -n N [--threads T] -- train|eval|tta ...: N local processes of this
// program, rendezvous as torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT; engine/distributed.h), their output forwarded line by line with a
// "[rank r] " prefix; the first rank to fail stops the others, and the launcher's error
// names it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include <vlmadapt/core/error.h>

#include <vlmadapt/cli/cli.h>

namespace vlmadapt::cli {
namespace {

// A port nobody listens on now: the kernel's choice for port 0 on the loopback.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(std::string("launch: socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw Error("launch: cannot find a free port: " + why);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

int positive(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    const int n = std::stoi(value, &used);
    if (used == value.size() && n >= 1) return n;
  } catch (const std::exception&) {
  }
  throw Error(flag + ": expected a positive integer, got '" + value + "'");
}

struct Child {
  pid_t pid = -1;
  int fd[2] = {-1, -1};        // read ends of its stdout and stderr
  std::string pending[2];      // a line not yet ended
  bool exited = false;
  int status = 0;
};

std::string describe(int status) {
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}

bool failed(int status) { return !(WIFEXITED(status) && WEXITSTATUS(status) == 0); }

int launch(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  const std::string usage =
      "usage: vlmadapt launch -n N [--threads T] -- COMMAND [options]\n"
      "  N processes of `vlmadapt COMMAND ...` on this machine (train, eval, tta), data parallel over c10d/Gloo:\n"
      "  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT are set for each;\n"
      "  --threads T sets OMP_NUM_THREADS and MKL_NUM_THREADS (default: the cores divided among the ranks).\n"
      "  Output lines carry a \"[rank r] \" prefix; if a rank fails the others are stopped.\n"
      "  Several machines: see docs/DISTRIBUTED.md.\n";
  int n = 0, threads = 0;
  std::vector<std::string> command;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      out << usage;
      return 0;
    }
    if (a == "--") {
      command.assign(args.begin() + static_cast<long>(i) + 1, args.end());
      break;
    }
    if ((a == "-n" || a == "--nproc" || a == "--threads") && i + 1 < args.size()) {
      (a == "--threads" ? threads : n) = positive(a, args[++i]);
      continue;
    }
    throw Error("launch: unexpected '" + a + "'\n" + usage);
  }
  if (n == 0) throw Error("launch: give the number of processes, -n N\n" + usage);
  if (command.empty()) throw Error("launch: give the command after --, e.g. -- train --recipe R\n" + usage);
  if (command[0] == "launch") throw Error("launch: the command cannot be launch itself");
  if (threads == 0) threads = std::max(1, static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN)) / n);
  const int port = free_port();

  std::vector<Child> children(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    int pipes[2][2];
    for (auto& p : pipes)
      if (::pipe2(p, O_CLOEXEC) != 0) throw Error(std::string("launch: pipe: ") + std::strerror(errno));
    out.flush();
    err.flush();
    const pid_t pid = ::fork();
    if (pid < 0) throw Error(std::string("launch: fork: ") + std::strerror(errno));
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // the launcher gone: no orphan keeps a port or a rendezvous
      ::dup2(pipes[0][1], STDOUT_FILENO);
      ::dup2(pipes[1][1], STDERR_FILENO);
      const std::string t = std::to_string(threads);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(n).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("OMP_NUM_THREADS", t.c_str(), 1);
      ::setenv("MKL_NUM_THREADS", t.c_str(), 1);
      std::vector<std::string> argv_s{"vlmadapt"};
      argv_s.insert(argv_s.end(), command.begin(), command.end());
      std::vector<char*> argv;
      for (auto& s : argv_s) argv.push_back(s.data());
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      const std::string msg = std::string("vlmadapt launch: cannot run /proc/self/exe: ") + std::strerror(errno) + "\n";
      (void)!::write(STDERR_FILENO, msg.data(), msg.size());
      ::_exit(127);
    }
    ::close(pipes[0][1]);
    ::close(pipes[1][1]);
    children[static_cast<size_t>(r)].pid = pid;
    children[static_cast<size_t>(r)].fd[0] = pipes[0][0];
    children[static_cast<size_t>(r)].fd[1] = pipes[1][0];
  }
  err << "vlmadapt launch: " << n << " processes, " << threads << " thread(s) each, rendezvous at 127.0.0.1:" << port << "\n";

  auto forward = [&](int r, int k, bool flush_all) {
    Child& c = children[static_cast<size_t>(r)];
    std::ostream& to = k == 0 ? out : err;
    std::string& buf = c.pending[k];
    size_t start = 0;
    for (size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1)
      to << "[rank " << r << "] " << buf.substr(start, nl + 1 - start);
    buf.erase(0, start);
    if (flush_all && !buf.empty()) {
      to << "[rank " << r << "] " << buf << "\n";
      buf.clear();
    }
    to.flush();
  };

  int first_failed = -1, first_status = 0;
  auto stop_time = std::chrono::steady_clock::time_point::max();
  int running = n;
  while (running > 0) {
    std::vector<pollfd> fds;
    std::vector<std::pair<int, int>> who;
    for (int r = 0; r < n; ++r)
      for (int k = 0; k < 2; ++k)
        if (children[static_cast<size_t>(r)].fd[k] >= 0) {
          fds.push_back({children[static_cast<size_t>(r)].fd[k], POLLIN, 0});
          who.emplace_back(r, k);
        }
    if (!fds.empty()) ::poll(fds.data(), fds.size(), 100);
    else ::usleep(100 * 1000);
    for (size_t i = 0; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      auto [r, k] = who[i];
      Child& c = children[static_cast<size_t>(r)];
      char buf[65536];
      const ssize_t got = ::read(c.fd[k], buf, sizeof buf);
      if (got > 0) {
        c.pending[k].append(buf, static_cast<size_t>(got));
        forward(r, k, false);
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        forward(r, k, true);
        ::close(c.fd[k]);
        c.fd[k] = -1;
      }
    }
    for (int r = 0; r < n; ++r) {
      Child& c = children[static_cast<size_t>(r)];
      if (c.exited) continue;
      int status = 0;
      if (::waitpid(c.pid, &status, WNOHANG) != c.pid) continue;
      c.exited = true;
      c.status = status;
      --running;
      if (failed(status) && first_failed < 0) {
        first_failed = r;
        first_status = status;
        err << "vlmadapt launch: rank " << r << " " << describe(status) << "; stopping the other ranks\n";
        for (auto& other : children)
          if (!other.exited) ::kill(other.pid, SIGTERM);
        stop_time = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      }
    }
    if (std::chrono::steady_clock::now() > stop_time) {  // SIGTERM ignored: a rank stuck in a call
      for (auto& other : children)
        if (!other.exited) ::kill(other.pid, SIGKILL);
      stop_time = std::chrono::steady_clock::time_point::max();
    }
  }
  for (int r = 0; r < n; ++r)  // what the ranks wrote before they exited
    for (int k = 0; k < 2; ++k) {
      Child& c = children[static_cast<size_t>(r)];
      if (c.fd[k] < 0) continue;
      char buf[65536];
      for (ssize_t got; (got = ::read(c.fd[k], buf, sizeof buf)) > 0 || (got < 0 && errno == EINTR);)
        if (got > 0) c.pending[k].append(buf, static_cast<size_t>(got));
      forward(r, k, true);
      ::close(c.fd[k]);
    }
  if (first_failed >= 0)
    throw Error("rank " + std::to_string(first_failed) + " of " + std::to_string(n) + " " + describe(first_status) +
                " (its output above carries the prefix [rank " + std::to_string(first_failed) + "])");
  return 0;
}

const bool registered =
    add_command({"launch", "run N local processes of train, eval or tta, data parallel (-n N -- COMMAND ...)", launch});

}  // namespace
}  // namespace vlmadapt::cli
