// Progress of long work: one rewritten line on a terminal (step, loss, learning rate,
// images/s, ETA), plain log lines elsewhere.
#pragma once
#include <chrono>
#include <iosfwd>
#include <string>

namespace vlmadapt {

class Progress {
 public:
  enum class Mode { Auto, Terminal, Log };  // Auto: Terminal when `out` is std::cerr on a tty
  Progress(std::string label, int64_t total_steps, std::ostream& out, Mode mode = Mode::Auto);
  // Reports step `step` (1-based) with the given numbers (NaN ones are left out).
  void update(int64_t step, double loss, double lr, int64_t images);
  void finish();
  static bool& quiet();  // silences all progress output (tests)

 private:
  std::string label_;
  int64_t total_;
  std::ostream& out_;
  bool tty_;
  int64_t images_ = 0, last_logged_ = -1;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace vlmadapt
