// Training on pseudolabels in the shared loop (Menghini et al., "Enhancing CLIP with
// CLIP", NeurIPS 2023; specs/METHODS.md §9): for a method whose contract says
// `pseudolabels`, under data.paradigm ssl | ul | trzsl. Each round scores the unlabelled
// images with the method (round 0: its zero-shot start), keeps the K most confident per
// class, and runs the one loop (trainer.h) on the labelled images plus those. Rounds are
// committed one by one in <run>/rounds/, so a killed run resumes to the same result.
#pragma once
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include <vlmadapt/engine/run_context.h>

namespace vlmadapt {

// The paper's per-class leaderboards of size k over `probs` [N,C] (rows: unlabelled images
// in their order; columns: candidate classes). Image i goes to the board of its argmax
// when it has room, or when its last entry is less confident (then the board is sorted,
// most confident first with ties in arrival order, and cut to k); otherwise it is offered
// to every other class in descending probability, joining each board with room or a less
// confident last entry (the official code's quirk: no break, so an image may hold several
// pseudolabels). Boards are not sorted until something is inserted into a full one, as
// in the code. Returns (image, class column) pairs, board by board.
std::vector<std::pair<int64_t, int64_t>> select_pseudolabels(const torch::Tensor& probs, int64_t k);

// Scores of `items` of `data` (their order) by the method's pseudolabel_logits for
// `round`: frozen features (cached) or pixel batches, as its contract takes. [N,C] float, CPU.
torch::Tensor pseudolabel_scores(RunContext& c, const Dataset& data, const std::vector<Item>& items, int64_t round);

// The rounds of the context's method on its task, continuing from <run_dir>/rounds when
// `resume`; returns the last round's loss. Throws vlmadapt::Error when the task has no
// unlabelled images (data.paradigm = supervised).
double train_in_rounds(RunContext& c, const std::string& run_dir, bool resume, std::ostream& log);

}  // namespace vlmadapt
