// Data parallel across processes, rendezvous as torchrun does it: RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the environment, c10d's TCPStore (served
// by rank 0), and ProcessGroupGloo on CPU or ProcessGroupNCCL when the run's device is a
// GPU and libtorch was built with NCCL (each rank then takes GPU LOCAL_RANK). Without
// those variables world() is one process and every collective returns its input:
// everything runs as before.
//
// Only src/engine/distributed.cpp includes the c10d headers. Every
// collective and the rendezvous give up after VLMADAPT_DIST_TIMEOUT seconds (default
// 300) with an error naming the rank(s) or the variable at fault, never a hang.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace vlmadapt::dist {

struct DistEnv {
  bool present = false;  // any of the variables is set: a distributed run
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  double timeout_s = 300;  // VLMADAPT_DIST_TIMEOUT
};

// The variables read through `get` (null when unset): an error names the variable when
// one is missing, not a number, or inconsistent ("RANK=3 is not below WORLD_SIZE=2").
DistEnv parse_env(const std::function<const char*(const char*)>& get);
DistEnv env_from_environment();

class Group {
 public:
  Group();  // one process
  // Connects; throws vlmadapt::Error on failure. `device` (the run's model.device) picks
  // the backend: NCCL for "cuda..." where built, else Gloo.
  Group(const DistEnv& env, const std::string& device = "cpu");
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool main() const { return rank_ == 0; }

  // Sums the tensors in place over the ranks (one flat buffer, one collective);
  // `what` names the collective in errors.
  void all_reduce_sum(const std::vector<at::Tensor>& tensors, const std::string& what);
  // Every rank's `rows` ([counts[r], ...] on rank r) in rank order, on every rank.
  at::Tensor all_gather_rows(const at::Tensor& rows, const std::vector<int64_t>& counts, const std::string& what);
  void barrier(const std::string& what);
  // Leaves this rank's error in the store, so that the ranks it leaves behind name it.
  void report_failure(const std::string& message) noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, size_ = 1;
  [[noreturn]] void fail(const std::string& what, const std::exception& e);
};

// The process-wide group: connects on first use when the variables are present, for the
// run's `device` (later calls get the group already connected).
Group& world(const std::string& device = "cpu");
// Whether world() is connected (false before first use and in a single process);
// does not connect.
bool world_started();

// The device a rank runs on: "cuda" without an index becomes "cuda:LOCAL_RANK" in a
// distributed run, so that each process of a machine takes its own GPU.
std::string rank_device(const std::string& device, const DistEnv& env);

// Items [begin, end) of `n` that `rank` of `ranks` takes: contiguous blocks of `align`
// items (a batch: then every rank's batches are the single process's batches).
std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int ranks, int64_t align = 1);

}  // namespace vlmadapt::dist
