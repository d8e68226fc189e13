// Recipes and option tables: INI parsing and types, composition, --set overrides,
// error messages, the to_ini round trip, run folders, CoOp's epoch table, and every
// recipe file shipped in recipes/. The tests register methods of their own, so they
// do not depend on which built-in methods exist.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <vlmadapt/core/error.h>
#include <vlmadapt/core/fs.h>
#include <vlmadapt/adapt/method.h>
#include <vlmadapt/engine/recipe.h>

#include "test_util.h"

namespace {

namespace fs = std::filesystem;
namespace vt = vlmadapt::testing;
using vlmadapt::Error;
using vlmadapt::OptionSet;
using vlmadapt::Recipe;

enum class Shade { Light, Dark };
const std::vector<std::pair<Shade, std::string>>& enum_names(Shade) {
  static const std::vector<std::pair<Shade, std::string>> n{{Shade::Light, "light"}, {Shade::Dark, "dark"}};
  return n;
}

struct ToyOptions {
  int n_ctx = 16;
  Shade shade = Shade::Light;
  double rate = 0.5;
  double scale = 1.5;
  bool csc = false;
  std::string position = "end";
  std::vector<std::string> templates{"a photo of a {}."};
  void bind(OptionSet& s) {
    s.add("n_ctx", n_ctx, "context length")
        .add("scale", scale, "a float")
        .add("csc", csc, "a bool")
        .add("position", position, "a choice", {"end", "middle", "front"})
        .add("templates", templates, "a list")
        .add("shade", shade, "an enum")
        .add("rate", rate, "a bounded float").range(0, 1);
  }
};

class Toy : public vlmadapt::Method {
 public:
  explicit Toy(const ToyOptions& o) : options(o) {
    weight = register_parameter("weight", torch::ones({2, 3}));
    register_buffer("counts", torch::zeros({2}));
  }
  vlmadapt::Contract contract() const override { return {vlmadapt::Input::Features, false, true}; }
  void setup(const vlmadapt::TaskContext&) override {}
  torch::Tensor logits(const vlmadapt::Batch& b) override { return b.image_features.matmul(weight.t()); }
  ToyOptions options;
  torch::Tensor weight;
};

struct OtherOptions {
  int depth = 2;
  void bind(OptionSet& s) { s.add("depth", depth, "an int"); }
};
class Other : public Toy {
 public:
  explicit Other(const OtherOptions&) : Toy(ToyOptions{}) {}
};

VLMADAPT_REGISTER_METHOD(Toy, ToyOptions, "toy_recipe", "test method of test_recipe")
VLMADAPT_REGISTER_METHOD(Other, OtherOptions, "toy_other", "second test method of test_recipe")

std::string write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
  return path.string();
}

using vlmadapt::testing::error_of;

Recipe parse(const std::string& text) { return vlmadapt::parse_recipe_text(text, "test.ini"); }

TEST(Options, ParsesTypesAndPrintsThemBack) {
  ToyOptions o;
  OptionSet s("toy");
  o.bind(s);
  s.set("toy.n_ctx", " +8 ");
  s.set("toy.scale", "5e-4");
  s.set("toy.position", "front");
  s.set("toy.templates", "a, b {}.| c {} |");
  EXPECT_EQ(o.n_ctx, 8);
  EXPECT_DOUBLE_EQ(o.scale, 5e-4);
  EXPECT_EQ(o.position, "front");
  EXPECT_EQ(o.templates, (std::vector<std::string>{"a, b {}.", "c {}"}));
  EXPECT_EQ(s.find("toy.templates")->get(), "a, b {}.|c {}");
  EXPECT_EQ(s.find("toy.scale")->get(), "0.0005");
  for (const char* t : {"true", "1", "YES", "on"}) {
    s.set("toy.csc", t);
    EXPECT_TRUE(o.csc) << t;
    s.set("toy.csc", "false");
  }
  for (const char* f : {"false", "0", "No", "off"}) {
    s.set("toy.csc", f);
    EXPECT_FALSE(o.csc) << f;
    s.set("toy.csc", "true");
  }
  // set(get()) changes nothing, for awkward doubles too.
  o.scale = 0.1 + 0.2;
  const double before = o.scale;
  s.set("toy.scale", s.find("toy.scale")->get());
  EXPECT_EQ(o.scale, before);
}

TEST(Options, BadValuesNameKeyAndValue) {
  ToyOptions o;
  OptionSet s("coop");
  o.bind(s);
  EXPECT_EQ(error_of([&] { s.set("coop.n_ctx", "abc"); }), "coop.n_ctx: expected an integer, got 'abc'");
  EXPECT_NE(error_of([&] { s.set("coop.n_ctx", "3.5"); }).find("expected an integer"), std::string::npos);
  EXPECT_NE(error_of([&] { s.set("coop.n_ctx", "99999999999"); }).find("in ["), std::string::npos);
  EXPECT_NE(error_of([&] { s.set("coop.scale", "fast"); }).find("expected a number"), std::string::npos);
  EXPECT_NE(error_of([&] { s.set("coop.csc", "maybe"); }).find("coop.csc: expected a boolean"), std::string::npos);
  EXPECT_EQ(error_of([&] { s.set("coop.position", "left"); }),
            "coop.position: expected one of end|middle|front, got 'left'");
  EXPECT_EQ(error_of([&] { s.set("coop.nctx", "1"); }), "unknown key 'coop.nctx'; did you mean 'coop.n_ctx'?");
}

TEST(Options, NearestKey) {
  EXPECT_EQ(vlmadapt::nearest_key("train.rl", {"train.lr", "train.epochs"}), "train.lr");
  EXPECT_EQ(vlmadapt::nearest_key("x", {}), "");
}

TEST(Recipe, ParsesSectionsAndTypes) {
  const Recipe r = parse(
      "method = toy_recipe\nname = demo\noutput = out\nforce = yes\n"
      "[data]\ndataset = oxford_pets\nshots = 4\nseed = 3\n"
      "[model]\ndevice = cuda:0\nhalf = on\n"
      "[train]\nlr = 0.01\noptimizer = adamw\nepochs = 7\n"
      "[eval]\nsplit = val\nbatch_size = 64\n"
      "[toy_recipe]\nn_ctx = 4\ntemplates = a {}.|b, c {}.\n"
      "[toy_other]\ndepth = 5\n");
  EXPECT_EQ(r.method, "toy_recipe");
  EXPECT_EQ(r.name, "demo");
  EXPECT_EQ(r.output, "out");
  EXPECT_TRUE(r.force);
  EXPECT_EQ(r.data.dataset, "oxford_pets");
  EXPECT_EQ(r.data.shots, 4);
  EXPECT_EQ(r.data.seed, 3);
  EXPECT_EQ(r.model.device, "cuda:0");
  EXPECT_TRUE(r.model.half);
  EXPECT_DOUBLE_EQ(r.train.lr, 0.01);
  EXPECT_EQ(r.train.optimizer, vlmadapt::Optimizer::AdamW);
  EXPECT_EQ(r.train.epochs, 7);
  EXPECT_EQ(r.eval.split, "val");
  EXPECT_EQ(r.eval.batch_size, 64);
  // Only the chosen method's values; toy_other's were validated but dropped.
  const std::map<std::string, std::string> expected{{"toy_recipe.n_ctx", "4"},
                                                    {"toy_recipe.templates", "a {}.|b, c {}."}};
  EXPECT_EQ(r.method_values, expected);
  auto method = std::dynamic_pointer_cast<Toy>(vlmadapt::make_method(r.method, r.method_values));
  ASSERT_TRUE(method);
  EXPECT_EQ(method->options.n_ctx, 4);
  EXPECT_EQ(method->options.templates, (std::vector<std::string>{"a {}.", "b, c {}."}));
}

TEST(Recipe, FilesComposeInOrderAndOverridesWin) {
  const auto dir = vt::temp_dir("recipe_compose");
  const auto a = write(dir / "a.ini", "method = toy_other\n[train]\nlr = 0.5\nbatch_size = 8\n"
                                      "[toy_recipe]\nn_ctx = 2\n[toy_other]\ndepth = 9\n");
  const auto b = write(dir / "b.ini", "method = toy_recipe\n[train]\nlr = 0.25\n[toy_recipe]\ncsc = true\n");
  Recipe r = vlmadapt::load_recipe({a, b});
  EXPECT_EQ(r.method, "toy_recipe");
  EXPECT_DOUBLE_EQ(r.train.lr, 0.25);
  EXPECT_EQ(r.train.batch_size, 8);
  EXPECT_EQ(r.name, "b");  // the stem of the last file
  // The dataset-style file's [toy_recipe] values survive although it chose another method.
  EXPECT_EQ(r.method_values.at("toy_recipe.n_ctx"), "2");
  EXPECT_EQ(r.method_values.at("toy_recipe.csc"), "true");
  EXPECT_EQ(r.method_values.count("toy_other.depth"), 0u);

  r = vlmadapt::load_recipe({a, b}, {"train.lr = 1e-3", "toy_recipe.n_ctx=32", "name=custom"});
  EXPECT_DOUBLE_EQ(r.train.lr, 1e-3);
  EXPECT_EQ(r.method_values.at("toy_recipe.n_ctx"), "32");
  EXPECT_EQ(r.name, "custom");
  r = vlmadapt::load_recipe({b, a}, {"method=toy_other"});
  EXPECT_DOUBLE_EQ(r.train.lr, 0.5);
  EXPECT_EQ(r.method_values, (std::map<std::string, std::string>{{"toy_other.depth", "9"}}));
}

TEST(Recipe, UnknownKeysSuggestTheNearest) {
  const auto dir = vt::temp_dir("recipe_unknown");
  const auto x = write(dir / "x.ini", "method = toy_recipe\n[train]\nlr_rate = 0.1\n");
  EXPECT_EQ(error_of([&] { vlmadapt::load_recipe({x}); }),
            x + ": unknown key 'train.lr_rate'; did you mean 'train.lr'?");
  EXPECT_EQ(error_of([&] { parse("[trian]\nlr = 1\n"); }),
            "test.ini: unknown key 'trian.lr'; did you mean 'train.lr'?");
  EXPECT_EQ(error_of([&] { parse("[toy_recipe]\nnctx = 1\n"); }),
            "test.ini: unknown key 'toy_recipe.nctx'; did you mean 'toy_recipe.n_ctx'?");
  EXPECT_EQ(error_of([&] { parse("mehtod = toy_recipe\n"); }),
            "test.ini: unknown key 'mehtod'; did you mean 'method'?");
  EXPECT_EQ(error_of([&] { vlmadapt::load_recipe({}, {"train.lr_rate=1"}); }),
            "--set: unknown key 'train.lr_rate'; did you mean 'train.lr'?");
  EXPECT_NE(error_of([&] { vlmadapt::load_recipe({}, {"train.lr"}); }).find("--set: expected key=value"),
            std::string::npos);
}

TEST(Recipe, BadValuesUnknownMethodsAndMissingFiles) {
  EXPECT_EQ(error_of([&] { parse("[toy_recipe]\nn_ctx = abc\n"); }),
            "test.ini: toy_recipe.n_ctx: expected an integer, got 'abc'");
  EXPECT_EQ(error_of([&] { parse("[toy_other]\ndepth = 1.5\n"); }),
            "test.ini: toy_other.depth: expected an integer, got '1.5'");
  EXPECT_EQ(error_of([&] { vlmadapt::load_recipe({}, {"data.shots=x"}); }),
            "--set: data.shots: expected an integer, got 'x'");
  const std::string bad_method = error_of([&] { parse("method = toy_recipee\n"); });
  EXPECT_NE(bad_method.find("test.ini: unknown method 'toy_recipee'"), std::string::npos) << bad_method;
  EXPECT_NE(bad_method.find("toy_other"), std::string::npos) << "lists the known methods: " << bad_method;
  EXPECT_THROW(vlmadapt::find_method("no_such_method"), Error);
  const auto missing = (vt::temp_dir("recipe_missing") / "nope.ini").string();
  EXPECT_NE(error_of([&] { vlmadapt::load_recipe({missing}); }).find(missing), std::string::npos);
  EXPECT_NE(error_of([&] { parse("[train]\nepochs_by_shots = 1:50,2\n"); }).find("train.epochs_by_shots"),
            std::string::npos);
  EXPECT_NE(error_of([&] { parse("just a line\n"); }).find("test.ini"), std::string::npos);
}

TEST(Recipe, IncludesResolveRelativeToTheIncludingFile) {
  const auto dir = vt::temp_dir("recipe_include");
  write(dir / "common" / "base.ini", "method = toy_recipe\n[data]\nshots = 2\n[train]\nlr = 0.5\n");
  const auto child = write(dir / "runs" / "child.ini",
                           "include = ../common/base.ini\n[train]\nlr = 0.125\n[toy_recipe]\nn_ctx = 3\n");
  const Recipe r = vlmadapt::load_recipe({child});
  EXPECT_EQ(r.method, "toy_recipe");
  EXPECT_EQ(r.data.shots, 2);
  EXPECT_DOUBLE_EQ(r.train.lr, 0.125);  // the including file wins
  EXPECT_EQ(r.name, "child");

  const auto a = write(dir / "a.ini", "include = b.ini\n");
  write(dir / "b.ini", "include = a.ini\n");
  EXPECT_NE(error_of([&] { vlmadapt::load_recipe({a}); }).find("include cycle"), std::string::npos);
  const auto lost = write(dir / "lost.ini", "include = nowhere.ini\n");
  const std::string message = error_of([&] { vlmadapt::load_recipe({lost}); });
  EXPECT_NE(message.find(lost), std::string::npos) << message;
  EXPECT_NE(message.find("nowhere.ini"), std::string::npos) << message;
}

TEST(Recipe, ToIniRoundTrips) {
  const Recipe r = vlmadapt::load_recipe(
      {}, {"method=toy_recipe", "name=rt", "data.dataset=dtd", "data.root=data/dtd", "train.lr=0.1",
           "train.weight_decay=5e-4", "model.half=1", "toy_recipe.templates=x {}.|y, z {}.",
           "toy_recipe.scale=0.30000000000000004"});
  const std::string ini = r.to_ini();
  EXPECT_NE(ini.find("method = toy_recipe\n"), std::string::npos) << ini;
  EXPECT_NE(ini.find("\n[train]\n"), std::string::npos) << ini;
  EXPECT_NE(ini.find("weight_decay = 0.0005\n"), std::string::npos) << ini;
  EXPECT_NE(ini.find("half = true\n"), std::string::npos) << ini;
  // The method section lists all its options, defaults included.
  EXPECT_NE(ini.find("\n[toy_recipe]\nn_ctx = 16\n"), std::string::npos) << ini;
  EXPECT_NE(ini.find("templates = x {}.|y, z {}.\n"), std::string::npos) << ini;
  const Recipe back = parse(ini);
  EXPECT_EQ(back.to_ini(), ini);
  EXPECT_EQ(back.name, "rt");
  EXPECT_EQ(back.data.root, "data/dtd");
  EXPECT_DOUBLE_EQ(back.train.lr, 0.1);
}

TEST(Recipe, RunDir) {
  const Recipe r = vlmadapt::load_recipe(
      {}, {"method=toy_recipe", "name=coop", "output=runs", "data.dataset=oxford_pets", "data.shots=4",
           "data.seed=2"});
  EXPECT_EQ(r.run_dir(), "runs/oxford_pets/toy_recipe/coop_4shot/seed2");
}

TEST(Recipe, EpochsForShots) {
  vlmadapt::TrainOptions t;  // CoOp's table by default
  const std::vector<std::pair<int, int>> coop{{1, 50}, {2, 100}, {4, 100}, {8, 200}, {16, 200}};
  for (auto [shots, epochs] : coop) EXPECT_EQ(t.epochs_for(shots, "dtd"), epochs) << shots;
  EXPECT_EQ(t.epochs_for(3, "dtd"), 100);   // nearest listed below
  EXPECT_EQ(t.epochs_for(32, "dtd"), 200);
  EXPECT_EQ(t.epochs_for(0, "dtd"), 50);    // none below: the smallest
  t.epochs = 7;
  EXPECT_EQ(t.epochs_for(16, "dtd"), 7);
  t.epochs = 0;
  for (const char* bad : {"", "1:50,x", "1:50,2:", "1-50", "1:0", "1:50,1:60"}) {
    t.epochs_by_shots = bad;
    EXPECT_NE(error_of([&] { t.epochs_for(1, "dtd"); }).find("train.epochs_by_shots"), std::string::npos)
        << "'" << bad << "'";
  }
  const auto imagenet = (vt::source_dir() / "recipes" / "datasets" / "imagenet.ini").string();
  const Recipe r = vlmadapt::load_recipe({imagenet});
  for (int shots : {1, 2, 4, 8, 16}) EXPECT_EQ(r.train.epochs_for(shots, "imagenet"), 50) << shots;
}

TEST(Recipe, ImageNetEpochsHoldInEitherOrder) {
  const auto names = vlmadapt::method_names();
  if (std::find(names.begin(), names.end(), "coop") == names.end())
    GTEST_SKIP() << "method 'coop' is not registered";
  const auto dir = vt::source_dir() / "recipes";
  const std::string imagenet = (dir / "datasets" / "imagenet.ini").string();
  const std::string coop = (dir / "coop" / "coop.ini").string();
  for (const auto& files : {std::vector<std::string>{imagenet, coop}, {coop, imagenet}}) {
    const Recipe r = vlmadapt::load_recipe(files);
    EXPECT_EQ(r.train.epochs_for(16, r.data.dataset), 50) << files.front();
    EXPECT_DOUBLE_EQ(r.train.lr, 0.002);
  }
  const Recipe pets = vlmadapt::load_recipe({(dir / "datasets" / "oxford_pets.ini").string(), coop});
  EXPECT_EQ(pets.train.epochs_for(1, "oxford_pets"), 50);
  EXPECT_EQ(pets.train.epochs_for(16, "oxford_pets"), 200);
  EXPECT_EQ(pets.run_dir(), "runs/oxford_pets/coop/coop_16shot/seed1");
  EXPECT_EQ(pets.method_values.at("coop.n_ctx"), "16");
}

TEST(MethodRegistry, BaseClassDefaults) {
  EXPECT_EQ(vlmadapt::method_options("toy_recipe").set().entries().size(), 7u);
  auto m = vlmadapt::make_method("toy_recipe", {{"toy_recipe.n_ctx", "4"}});
  EXPECT_EQ(m->trainable_parameters().size(), 1u);
  vlmadapt::Batch batch{{}, torch::ones({2, 3}), torch::tensor({0, 1}, torch::kLong)};
  EXPECT_TRUE(m->loss(batch).defined());
  EXPECT_EQ(m->adapt_and_predict(batch).sizes(), (std::vector<int64_t>{1, 2}));
  auto state = m->state();
  ASSERT_EQ(state.size(), 2u);
  state["weight"].fill_(3);  // a clone: the method's own weight is untouched
  EXPECT_EQ(m->parameters()[0].sum().item<float>(), 6.f);
  m->load_state(state, "saved.safetensors");
  EXPECT_EQ(m->parameters()[0].sum().item<float>(), 18.f);
  state["weight"] = torch::zeros({3, 2});
  EXPECT_NE(error_of([&] { m->load_state(state, "saved.safetensors"); }).find("saved.safetensors: key 'weight'"),
            std::string::npos);
  state.erase("weight");
  EXPECT_NE(error_of([&] { m->load_state(state, "w.st"); }).find("missing key 'weight'"), std::string::npos);
}

// ---- every recipe in recipes/ parses ------------------------------------------

std::vector<std::string> recipe_files() {
  std::vector<std::string> files;
  const auto root = vt::source_dir() / "recipes";
  if (fs::exists(root))
    for (const auto& entry : fs::recursive_directory_iterator(root)) {
      const std::string rel = fs::relative(entry.path(), root).generic_string();
      // recipes/pretrain/ holds `vlmadapt pretrain` recipes, read by load_pretrain_recipe.
      if (entry.path().extension() == ".ini" && rel.rfind("pretrain/", 0) != 0) files.push_back(rel);
    }
  std::sort(files.begin(), files.end());
  return files;
}

class RecipeFile : public ::testing::TestWithParam<std::string> {};

TEST_P(RecipeFile, Parses) {
  const fs::path path = vt::source_dir() / "recipes" / GetParam();
  const std::string text = vlmadapt::read_file(path.string());
  EXPECT_EQ(text.rfind("#", 0), 0u) << "starts with a comment saying what it is";
  // Every method the file names (method = or a [section]) must be registered to check it;
  // without `method =` it is the default method.
  std::smatch m;
  const std::regex names(R"((?:^|\n)\s*(?:method\s*=\s*(\w+)|\[(\w+)\]))");
  const auto names_end = std::sregex_iterator();
  const auto known = vlmadapt::method_names();
  std::vector<std::string> needed;
  if (!std::regex_search(text, std::regex(R"((^|\n)\s*method\s*=)"))) needed.push_back(Recipe{}.method);
  for (auto it = std::sregex_iterator(text.begin(), text.end(), names); it != names_end; ++it) {
    const std::string name = (*it)[1].matched ? (*it)[1].str() : (*it)[2].str();
    if (name != "data" && name != "model" && name != "train" && name != "eval") needed.push_back(name);
  }
  for (const auto& name : needed)
    if (std::find(known.begin(), known.end(), name) == known.end())
      GTEST_SKIP() << GetParam() << " needs method '" << name << "', which is not registered";
  const Recipe r = vlmadapt::load_recipe({path.string()});
  EXPECT_EQ(r.name, path.stem().string());
  EXPECT_EQ(vlmadapt::parse_recipe_text(r.to_ini(), "resolved").to_ini(), r.to_ini());
}

INSTANTIATE_TEST_SUITE_P(Shipped, RecipeFile, ::testing::ValuesIn(recipe_files()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

}  // namespace

namespace {

TEST(TypedOptions, ARecipeParsesTheMethodsValuesOnceIntoItsOptions) {
  Recipe r = vlmadapt::parse_recipe_text("method = toy_recipe\n[toy_recipe]\nn_ctx = 3\nshade = dark\nrate = 0.25\n", "t.ini");
  const auto options = r.method_options();
  const auto& typed = options.as<ToyOptions>();
  EXPECT_EQ(typed.n_ctx, 3);
  EXPECT_EQ(typed.shade, Shade::Dark);
  EXPECT_EQ(typed.rate, 0.25);
  auto method = std::dynamic_pointer_cast<Toy>(vlmadapt::make_method(options));
  ASSERT_TRUE(method);
  EXPECT_EQ(method->options.shade, Shade::Dark);
  // Copies are deep: changing one leaves the other as it was.
  auto copy = options;
  copy.apply("toy_recipe.n_ctx", "9");
  EXPECT_EQ(copy.as<ToyOptions>().n_ctx, 9);
  EXPECT_EQ(options.as<ToyOptions>().n_ctx, 3);
  EXPECT_THROW(options.as<OtherOptions>(), vlmadapt::Error);
  // The resolved recipe prints the enum by name.
  EXPECT_NE(r.to_ini().find("shade = dark"), std::string::npos);
}

TEST(TypedOptions, ChoicesAndRangesAreCheckedWithTheirAllowedValues) {
  auto err = vt::error_of([] { vlmadapt::parse_recipe_text("method = toy_recipe\n[toy_recipe]\nshade = grey\n", "t.ini"); });
  EXPECT_NE(err.find("t.ini: toy_recipe.shade: expected one of light|dark, got 'grey'"), std::string::npos) << err;
  err = vt::error_of([] { vlmadapt::parse_recipe_text("method = toy_recipe\n[toy_recipe]\nrate = 1.5\n", "t.ini"); });
  EXPECT_NE(err.find("toy_recipe.rate: expected a number in [0, 1], got '1.5'"), std::string::npos) << err;
  err = vt::error_of([] { vlmadapt::parse_recipe_text("[train]\nbatch_size = 0\n", "t.ini"); });
  EXPECT_NE(err.find("train.batch_size: expected a number in [1, inf], got '0'"), std::string::npos) << err;
  err = vt::error_of([] { vlmadapt::parse_recipe_text("[train]\noptimizer = rmsprop\n", "t.ini"); });
  EXPECT_NE(err.find("train.optimizer: expected one of sgd|adam|adamw"), std::string::npos) << err;
  err = vt::error_of([] { vlmadapt::parse_recipe_text("[eval]\nviews = -2\n", "t.ini"); });
  EXPECT_NE(err.find("eval.views"), std::string::npos) << err;
  // The help lists what an option accepts.
  const auto options = vlmadapt::method_options("toy_recipe");
  EXPECT_EQ(options.set().find("toy_recipe.shade")->accepted(), "one of light|dark");
  EXPECT_EQ(options.set().find("toy_recipe.rate")->accepted(), "in [0, 1]");
}

}  // namespace
