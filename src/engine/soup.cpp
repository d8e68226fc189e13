#include <vlmadapt/engine/soup.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <ostream>
#include <set>

#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/engine/run.h>
#include <vlmadapt/engine/run_context.h>
#include <vlmadapt/engine/transfer.h>

namespace vlmadapt {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string shape_text(const torch::Tensor& t) { return c10::str(t.sizes()); }

// Same keys, shapes and dtypes, or an error naming the state, the key and the shapes.
void check_same_keys(const TensorMap& a, const TensorMap& b, const std::string& an, const std::string& bn) {
  for (const auto& [key, t] : b)
    if (!a.count(key))
      throw Error(bn + ": state key '" + key + "' " + shape_text(t) + " is not in " + an +
                  "'s state; a soup averages runs with the same state keys");
  for (const auto& [key, t] : a) {
    auto it = b.find(key);
    if (it == b.end())
      throw Error(bn + ": state has no key '" + key + "' (" + an + "'s is " + shape_text(t) +
                  "); a soup averages runs with the same state keys");
    if (it->second.sizes() != t.sizes())
      throw Error(bn + ": state key '" + key + "' has shape " + shape_text(it->second) + ", but " + an + "'s is " +
                  shape_text(t) + "; a soup averages runs whose options set the same shapes");
    if (it->second.scalar_type() != t.scalar_type())
      throw Error(bn + ": state key '" + key + "' is " + std::string(c10::toString(it->second.scalar_type())) +
                  ", but " + an + "'s is " + c10::toString(t.scalar_type()));
  }
}

}  // namespace

TensorMap average_states(const std::vector<TensorMap>& states, const std::vector<std::string>& names) {
  if (states.empty() || states.size() != names.size()) throw Error("soup: no states to average");
  for (size_t i = 1; i < states.size(); ++i) check_same_keys(states[0], states[i], names[0], names[i]);
  TensorMap out;
  for (const auto& [key, first] : states[0]) {
    if (!first.is_floating_point()) {  // counters, flags: there is no mean of them
      for (size_t i = 1; i < states.size(); ++i)
        if (!torch::equal(states[i].at(key), first))
          throw Error(names[i] + ": state key '" + key + "' (" + c10::toString(first.scalar_type()) + ") differs from " +
                      names[0] + "'s; tensors of integers cannot be averaged");
      out[key] = first.clone();
      continue;
    }
    // float64 sums, rounded once to the state's dtype: the mean of one state is that state.
    auto sum = torch::zeros(first.sizes(), torch::TensorOptions().dtype(torch::kDouble));
    for (const auto& s : states) sum += s.at(key).to(torch::kCPU, torch::kDouble);
    out[key] = (sum / static_cast<double>(states.size())).to(first.scalar_type());
  }
  return out;
}

namespace {

struct Ingredient {
  RunFolder run;
  TensorMap state;
  std::string model;  // checkpoint_id of the resolved checkpoint
};

std::string class_text(const RunFolder& r) {
  return r.recipe.data.dataset + ", data.classes = " + r.recipe.data.classes + ", " +
         std::to_string(r.classnames.size()) + " classes";
}

void check_ingredient(const Ingredient& first, const Ingredient& x) {
  const RunFolder &a = first.run, &b = x.run;
  if (a.recipe.method != b.recipe.method)
    throw Error(b.dir + ": method " + b.recipe.method + ", but " + a.dir + " is " + a.recipe.method +
                "; a soup averages runs of one method");
  if (first.model != x.model)
    throw Error(b.dir + ": model " + b.recipe.model.checkpoint + ", but " + a.dir + " uses " +
                a.recipe.model.checkpoint + "; a soup averages runs of one model");
  if (a.recipe.data.dataset != b.recipe.data.dataset || a.classnames != b.classnames) {
    std::string why;
    for (size_t i = 0; why.empty() && i < std::min(a.classnames.size(), b.classnames.size()); ++i)
      if (a.classnames[i] != b.classnames[i]) why = "; class " + std::to_string(i) + " is '" + b.classnames[i] + "' there, '" + a.classnames[i] + "' in " + a.dir;
    throw Error(b.dir + ": classes (" + class_text(b) + ") differ from " + a.dir + "'s (" + class_text(a) + ")" + why +
                "; a soup averages runs of one class set");
  }
}

// Option values that may differ (learning rate, a loss weight): noted, as the soup's recipe is the first's.
void note_option_differences(const Ingredient& first, const Ingredient& x, std::ostream& log) {
  const MethodOptions a = first.run.recipe.method_options(), b = x.run.recipe.method_options();
  for (const auto& e : b.set().entries()) {
    const auto* mine = a.set().find(e.key);
    if (mine && mine->get() != e.get())
      log << "note: " << x.run.dir << ": " << e.key << " = " << e.get() << " (the soup's recipe keeps " << mine->get()
          << " from " << first.run.dir << ")\n";
  }
}

std::vector<Ingredient> read_ingredients(const SoupOptions& o, std::ostream& log) {
  if (o.runs.empty()) throw Error("soup: give the run folders to average");
  std::vector<Ingredient> xs;
  for (const auto& dir : o.runs) {
    if (fs::exists(o.out) && fs::exists(dir) && fs::equivalent(dir, o.out))
      throw Error(dir + ": the soup's --out folder is one of its ingredients");
    Ingredient x{read_run_folder(dir), {}, {}};
    x.state = read_safetensors(x.run.state_file);
    x.model = checkpoint_id(resolve_checkpoint(x.run.recipe.model.checkpoint));
    if (!xs.empty()) check_ingredient(xs.front(), x), note_option_differences(xs.front(), x, log);
    xs.push_back(std::move(x));
  }
  std::vector<TensorMap> states;
  std::vector<std::string> names;
  for (const auto& x : xs) states.push_back(x.state), names.push_back(x.run.dir);
  average_states(states, names);  // every key and shape checked before anything is evaluated
  return xs;
}

// The first ingredient's split without the images any ingredient trained on (val only:
// train is what it was, test is the whole test split). Returns how many val images went.
int write_soup_split(const std::vector<Ingredient>& xs, const fs::path& path) {
  std::set<std::string> trained;
  for (const auto& x : xs) {
    const json other = read_json(fs::path(x.run.dir) / "split.json");
    for (const auto& item : other.at("train")) trained.insert(item.at(0).get<std::string>());
  }
  json split = read_json(fs::path(xs.front().run.dir) / "split.json");
  json val = json::array();
  int removed = 0;
  for (const auto& item : split.at("val")) {
    if (trained.count(item.at(0).get<std::string>())) ++removed;
    else val.push_back(item);
  }
  split["val"] = val;
  write_file_atomic(path.string(), split.dump(1) + "\n");
  return removed;
}

double val_top1(RunContext& c, const TensorMap& state, const std::string& where) {
  c.method->load_state(state, where);
  return evaluate(eval_setup(c, c.task, ""), c.task.val, "val").top1;
}

TensorMap mix(const std::vector<const Ingredient*>& xs) {
  std::vector<TensorMap> states;
  std::vector<std::string> names;
  for (const auto* x : xs) states.push_back(x->state), names.push_back(x->run.dir);
  return average_states(states, names);
}

// Model soups' greedy soup, on the validation split only.
TensorMap greedy_soup(RunContext& c, const std::vector<Ingredient>& xs, bool strict,
                      std::vector<SoupIngredient>& record, std::ostream& log) {
  if (c.task.val.empty())
    throw Error("greedy soup: no validation images in " + xs.front().run.dir +
                "'s split (without the ingredients' train images); a greedy soup selects on validation only, never "
                "on test: train the runs with validation images (data.val_shots) or make a uniform soup");
  std::vector<std::pair<double, size_t>> scored;
  for (size_t i = 0; i < xs.size(); ++i) {
    scored.emplace_back(val_top1(c, xs[i].state, xs[i].run.state_file), i);
    log << "ingredient " << xs[i].run.dir << ": val top-1 " << scored.back().first << "%\n";
  }
  std::stable_sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<const Ingredient*> kept{&xs[scored[0].second]};
  double best = scored[0].first;
  record.push_back({xs[scored[0].second].run.dir, best, true});
  for (size_t k = 1; k < scored.size(); ++k) {
    const Ingredient* next = &xs[scored[k].second];
    auto with = kept;
    with.push_back(next);
    const double acc = val_top1(c, mix(with), "the soup with " + next->run.dir);
    const bool keep = strict ? acc > best : acc >= best;
    log << (keep ? "kept " : "dropped ") << next->run.dir << ": soup val top-1 " << acc << "% (was " << best << "%)\n";
    if (keep) kept = with, best = acc;
    record.push_back({next->run.dir, scored[k].first, keep});
  }
  return mix(kept);
}

Recipe soup_recipe(const RunFolder& first, bool greedy) {
  Recipe r = first.recipe;
  r.name += greedy ? "_greedy_soup" : "_soup";
  r.force = false;
  return r;
}

json soup_run_json(const Recipe& r, const SoupOptions& o, const SoupResult& result, const RunContext& c, int removed) {
  json ingredients = json::array(), kept = json::array();
  for (const auto& x : result.ingredients) {
    json i = {{"run", x.run}, {"kept", x.kept}};
    if (x.val_top1 >= 0) i["val_top1"] = x.val_top1;
    ingredients.push_back(i);
    if (x.kept) kept.push_back(x.run);
  }
  json soup = {{"mode", o.greedy ? "greedy" : "uniform"}, {"ingredients", ingredients}, {"kept", kept},
               {"val_images", c.task.val.size()}, {"val_removed_as_trained_on", removed}};
  if (o.greedy) soup["keep_if"] = o.strict ? "val top-1 rises" : "val top-1 does not drop";
  return {{"dataset", r.data.dataset}, {"method", r.method}, {"recipe", r.name}, {"shots", r.data.shots},
          {"seed", r.data.seed}, {"status", "finished"}, {"kind", "soup"}, {"soup", soup},
          {"selection", o.greedy ? "val" : "none"}, {"adaptation", to_string(c.method->contract().adaptation)}};
}

// A soup may replace an earlier soup, never another run.
void check_out_folder(const std::string& out) {
  if (out.empty()) throw Error("soup: give the soup's run folder with --out DIR");
  const fs::path run = fs::path(out) / "run.json";
  if (is_file(run) && read_json(run).value("kind", "") != "soup")
    throw Error(out + ": holds a run that is not a soup; give another --out folder");
}

}  // namespace

SoupResult make_soup(const SoupOptions& o, std::ostream& log) {
  check_out_folder(o.out);
  const std::vector<Ingredient> xs = read_ingredients(o, log);
  const fs::path dir(o.out);
  FolderLock lock(dir);
  remove_temporary_files(dir);
  const Recipe recipe = soup_recipe(xs.front().run, o.greedy);
  fs::remove(dir / "run.json");  // no finished soup until this one is
  write_file_atomic((dir / "recipe.ini").string(), recipe.to_ini());
  const int removed = write_soup_split(xs, dir / "split.json");
  RunContext c = open_run_context(recipe, (dir / "split.json").string());

  SoupResult result;
  result.dir = o.out;
  TensorMap soup;
  if (o.greedy) {
    soup = greedy_soup(c, xs, o.strict, result.ingredients, log);
  } else {
    std::vector<const Ingredient*> all;
    for (const auto& x : xs) all.push_back(&x), result.ingredients.push_back({x.run.dir, -1, true});
    soup = mix(all);
  }
  const std::string state = (dir / "method.safetensors").string();
  write_safetensors(state, soup);
  c.method->load_state(soup, state);
  result.metrics = evaluate_context(c, o.out, {"val", "test"}, log);
  write_file_atomic((dir / "metrics.json").string(), result.metrics.dump(2) + "\n");
  write_file_atomic((dir / "run.json").string(), soup_run_json(recipe, o, result, c, removed).dump(2) + "\n");
  if (!recipe.eval.transfer.empty()) evaluate_transfers(o.out, recipe.eval.transfer, log);
  return result;
}

}  // namespace vlmadapt
