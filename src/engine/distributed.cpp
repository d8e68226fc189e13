// The only file that includes c10d: rendezvous (TCPStore), the Gloo or NCCL process
// group, and the few collectives the loop and the evaluator need, each with errors that
// name ranks. NCCL is compiled in only where libtorch was built with it (TorchConfig
// defines USE_C10D_NCCL; Debian's CPU libtorch does not).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1  // TorchConfig usually defines it
#endif
#include <vlmadapt/engine/distributed.h>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>

#include <ATen/ATen.h>

#include <vlmadapt/core/error.h>

namespace vlmadapt::dist {

namespace {

int integer(const char* name, const char* value) {
  const std::string v = value;
  try {
    size_t used = 0;
    const long n = std::stol(v, &used);
    if (used == v.size() && n >= INT32_MIN && n <= INT32_MAX) return static_cast<int>(n);
  } catch (const std::exception&) {
  }
  throw Error(std::string(name) + "=" + v + " is not an integer");
}

std::string failed_key(int rank) { return "vlmadapt/failed/" + std::to_string(rank); }

}  // namespace

DistEnv parse_env(const std::function<const char*(const char*)>& get) {
  DistEnv e;
  const char *rank = get("RANK"), *world = get("WORLD_SIZE"), *local = get("LOCAL_RANK");
  const char *addr = get("MASTER_ADDR"), *port = get("MASTER_PORT"), *timeout = get("VLMADAPT_DIST_TIMEOUT");
  if (timeout) {
    char* end = nullptr;
    e.timeout_s = std::strtod(timeout, &end);
    if (*timeout == '\0' || *end != '\0' || !(e.timeout_s > 0))
      throw Error(std::string("VLMADAPT_DIST_TIMEOUT=") + timeout + " is not a positive number of seconds");
  }
  e.present = rank || world;
  if (!e.present) return e;
  if (!world) throw Error(std::string("WORLD_SIZE is not set (RANK=") + rank + " is)");
  if (!rank) throw Error(std::string("RANK is not set (WORLD_SIZE=") + world + " is)");
  e.world_size = integer("WORLD_SIZE", world);
  e.rank = integer("RANK", rank);
  if (e.world_size < 1) throw Error("WORLD_SIZE=" + std::to_string(e.world_size) + " is not at least 1");
  if (e.rank < 0 || e.rank >= e.world_size)
    throw Error("RANK=" + std::to_string(e.rank) + " is not below WORLD_SIZE=" + std::to_string(e.world_size) +
                (e.rank < 0 ? " (or is negative)" : ""));
  e.local_rank = local ? integer("LOCAL_RANK", local) : e.rank;
  if (e.local_rank < 0) throw Error("LOCAL_RANK=" + std::to_string(e.local_rank) + " is negative");
  if (e.world_size == 1) return e;  // one process: nothing to connect to
  if (!addr || !*addr) throw Error("MASTER_ADDR is not set (needed with WORLD_SIZE=" + std::to_string(e.world_size) + ")");
  if (!port) throw Error("MASTER_PORT is not set (needed with WORLD_SIZE=" + std::to_string(e.world_size) + ")");
  e.master_addr = addr;
  e.master_port = integer("MASTER_PORT", port);
  if (e.master_port < 1 || e.master_port > 65535)
    throw Error("MASTER_PORT=" + std::to_string(e.master_port) + " is not a port (1..65535)");
  return e;
}

DistEnv env_from_environment() {
  return parse_env([](const char* name) { return std::getenv(name); });
}

std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int ranks, int64_t align) {
  align = std::max<int64_t>(1, align);
  const int64_t blocks = (n + align - 1) / align;
  const int64_t lo = blocks * rank / ranks, hi = blocks * (rank + 1) / ranks;
  return {std::min(n, lo * align), std::min(n, hi * align)};
}

std::string rank_device(const std::string& device, const DistEnv& env) {
  if (env.world_size > 1 && device == "cuda") return "cuda:" + std::to_string(env.local_rank);
  return device;
}

struct Group::Impl {
  DistEnv env;
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  at::Device device{at::kCPU};  // where the collectives' buffers live: the GPU for NCCL
};

namespace {

c10::intrusive_ptr<c10d::ProcessGroup> gloo_group(const c10::intrusive_ptr<c10d::TCPStore>& store, const DistEnv& env,
                                                  std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"))
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  else if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost")
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  else
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  options->threads = 2;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, options);
}

}  // namespace

Group::Group() = default;

Group::Group(const DistEnv& env, const std::string& device) : rank_(env.rank), size_(env.world_size) {
  if (env.world_size == 1) return;
  impl_ = std::make_unique<Impl>();
  impl_->env = env;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(env.timeout_s * 1000));
  const std::string where = "MASTER_ADDR=" + env.master_addr + " MASTER_PORT=" + std::to_string(env.master_port);
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(env.master_port);
    o.isServer = env.rank == 0;
    o.numWorkers = static_cast<size_t>(env.world_size);
    o.waitWorkers = true;
    o.timeout = timeout;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    if (env.rank == 0)
      throw Error("rank 0 cannot serve the rendezvous at " + where +
                  " (port in use, or not every rank of WORLD_SIZE=" + std::to_string(env.world_size) +
                  " connected within " + std::to_string(static_cast<int>(env.timeout_s)) + " s): " +
                  what.substr(0, what.find('\n')));
    throw Error("rank " + std::to_string(env.rank) + " cannot reach rank 0's rendezvous at " + where + " within " +
                std::to_string(static_cast<int>(env.timeout_s)) + " s: " + what.substr(0, what.find('\n')));
  }
  try {
#ifdef USE_C10D_NCCL
    if (device.rfind("cuda", 0) == 0) {
      impl_->device = at::Device(rank_device(device, env));
      c10::cuda::set_device(impl_->device.index());  // NCCL's communicator binds to the current device
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      impl_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, env.rank, env.world_size, options);
    }
#endif
    if (!impl_->pg) impl_->pg = gloo_group(impl_->store, env, timeout);  // GPU tensors then go through the host
  } catch (const std::exception& e) {
    fail("connecting the process group", e);
  }
}

Group::~Group() = default;

void Group::report_failure(const std::string& message) noexcept {
  if (!impl_) return;
  try {
    const std::string m = message.substr(0, 2000);
    impl_->store->set(failed_key(rank_), std::vector<uint8_t>(m.begin(), m.end()));
  } catch (...) {
  }
}

void Group::fail(const std::string& what, const std::exception& e) {
  // Name the rank(s) at fault: those that left their error in the store, else every
  // other rank (one of them exited or stopped answering).
  std::string culprits;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    try {
      if (impl_->store->check({failed_key(r)})) {
        const auto v = impl_->store->get(failed_key(r));
        culprits += "; rank " + std::to_string(r) + " failed: " + std::string(v.begin(), v.end());
      }
    } catch (...) {
      culprits = "; rank 0 (the rendezvous store) is gone";
      break;
    }
  }
  if (culprits.empty()) {
    culprits = "; no rank reported an error: rank(s)";
    for (int r = 0; r < size_; ++r)
      if (r != rank_) culprits += " " + std::to_string(r);
    culprits += " exited, were killed, or did not answer within " +
                std::to_string(static_cast<int>(impl_->env.timeout_s)) + " s";
  }
  std::string detail = e.what();
  detail = detail.substr(0, detail.find('\n'));
  throw Error("distributed: " + what + " failed on rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
              culprits + " (" + detail + ")");
}

void Group::all_reduce_sum(const std::vector<at::Tensor>& tensors, const std::string& what) {
  if (!impl_ || tensors.empty()) return;
  std::vector<at::Tensor> flat_parts;
  for (const auto& t : tensors) flat_parts.push_back(t.detach().to(impl_->device, at::kFloat).reshape({-1}));
  std::vector<at::Tensor> buffer{at::cat(flat_parts)};
  try {
    impl_->pg->allreduce(buffer)->wait();
  } catch (const std::exception& e) {
    fail("all-reduce of " + what, e);
  }
  int64_t offset = 0;
  for (const auto& t : tensors) {
    const int64_t n = t.numel();
    at::NoGradGuard no_grad;
    t.copy_(buffer[0].narrow(0, offset, n).view(t.sizes()));
    offset += n;
  }
}

at::Tensor Group::all_gather_rows(const at::Tensor& rows, const std::vector<int64_t>& counts, const std::string& what) {
  if (!impl_) return rows;
  const int64_t most = *std::max_element(counts.begin(), counts.end());
  auto shape = rows.sizes().vec();
  shape[0] = most;
  auto padded = at::zeros(shape, rows.options().device(impl_->device));
  if (rows.size(0) > 0) padded.narrow(0, 0, rows.size(0)).copy_(rows);
  std::vector<at::Tensor> input{padded};
  std::vector<std::vector<at::Tensor>> output(1);
  for (int r = 0; r < size_; ++r) output[0].push_back(at::empty_like(padded));
  try {
    impl_->pg->allgather(output, input)->wait();
  } catch (const std::exception& e) {
    fail("all-gather of " + what, e);
  }
  std::vector<at::Tensor> parts;
  for (int r = 0; r < size_; ++r) parts.push_back(output[0][static_cast<size_t>(r)].narrow(0, 0, counts[static_cast<size_t>(r)]));
  return at::cat(parts).to(rows.device());
}

void Group::barrier(const std::string& what) {
  if (!impl_) return;
  try {
    impl_->pg->barrier()->wait();
  } catch (const std::exception& e) {
    fail("barrier (" + what + ")", e);
  }
}

namespace {
std::mutex world_mutex;
std::unique_ptr<Group> the_world;
}  // namespace

Group& world(const std::string& device) {
  std::lock_guard<std::mutex> lock(world_mutex);
  if (!the_world) {
    const DistEnv env = env_from_environment();
    the_world = env.present ? std::make_unique<Group>(env, device) : std::make_unique<Group>();
  }
  return *the_world;
}

bool world_started() {
  std::lock_guard<std::mutex> lock(world_mutex);
  return the_world != nullptr && the_world->size() > 1;
}

}  // namespace vlmadapt::dist
