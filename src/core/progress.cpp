#include <vlmadapt/core/progress.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>

namespace vlmadapt {

bool& Progress::quiet() {
  static bool q = false;
  return q;
}

Progress::Progress(std::string label, int64_t total_steps, std::ostream& out, Mode mode)
    : label_(std::move(label)), total_(total_steps), out_(out),
      tty_(mode == Mode::Terminal || (mode == Mode::Auto && &out == &std::cerr && ::isatty(STDERR_FILENO))),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t step, double loss, double lr, int64_t images) {
  if (quiet()) return;
  images_ += images;
  // Off a terminal, log about ten lines per run of work, not one per step.
  const int64_t every = std::max<int64_t>(1, total_ / 10);
  if (!tty_ && step != total_ && step / every == last_logged_) return;
  last_logged_ = step / every;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double eta = step > 0 ? secs / step * (total_ - step) : 0;
  char buf[256];
  int n = std::snprintf(buf, sizeof buf, "%s %lld/%lld", label_.c_str(), static_cast<long long>(step),
                        static_cast<long long>(total_));
  if (!std::isnan(loss)) n += std::snprintf(buf + n, sizeof buf - n, " loss %.4f", loss);
  if (!std::isnan(lr)) n += std::snprintf(buf + n, sizeof buf - n, " lr %.3g", lr);
  std::snprintf(buf + n, sizeof buf - n, " %.1f img/s eta %.0fs", secs > 0 ? images_ / secs : 0.0, eta);
  if (tty_) out_ << "\r" << buf << "\x1b[K" << std::flush;
  else out_ << buf << "\n";
}

void Progress::finish() {
  if (tty_ && !quiet()) out_ << "\n";
}

}  // namespace vlmadapt
