#!/usr/bin/env bash
# The installed package as a researcher uses it: install into BUILD_DIR/install-test, then
#  - `vlmadapt info default` run away from the source tree finds the installed model;
#  - examples/plugin (CLIP-Adapter) builds against the install with vlmadapt_add_cli, its
#    compiler sees the installed headers only, and `my_vlmadapt` lists the method and
#    trains it 1 epoch on 1 shot of Fashion-MNIST with the installed recipe.
# Needs a built BUILD_DIR (scripts/build.sh). Prints PASS or FAIL last.
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
BUILD_DIR=$(realpath "${BUILD_DIR:-build}")
PREFIX=$BUILD_DIR/install-test
PLUGIN_BUILD=$BUILD_DIR/plugin-test
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

fail() { echo "test_plugin: FAIL: $*"; exit 1; }
step() { echo "== $*"; }

step "install into $PREFIX"
rm -rf "$PREFIX"
cmake --install "$BUILD_DIR" --prefix "$PREFIX" > "$TMP/install.log" || { cat "$TMP/install.log"; fail "cmake --install"; }
for f in bin/vlmadapt share/vlmadapt/models/default.safetensors share/vlmadapt/recipes/datasets/fashion_mnist.ini \
         include/vlmadapt/adapt/method.h include/vlmadapt/cli/cli.h lib/cmake/vlmadapt/vlmadaptCli.cmake; do
  [ -e "$PREFIX/$f" ] || fail "$f is not installed"
done
MODEL=$PREFIX/share/vlmadapt/models/default.safetensors

# From /tmp, with no $VLMADAPT_MODELS, `default` must be the installed model: the printed
# path tells it from ./models and from the source tree's models/ (also still searched).
step "installed vlmadapt info default (cwd /tmp)"
(cd /tmp && env -u VLMADAPT_MODELS "$PREFIX/bin/vlmadapt" info default) > "$TMP/info.txt" 2>&1 || { cat "$TMP/info.txt"; fail "vlmadapt info default"; }
cat "$TMP/info.txt"
grep -qF "file:         $MODEL" "$TMP/info.txt" || fail "vlmadapt info default did not resolve to $MODEL"

step "build examples/plugin against the install"
rm -rf "$PLUGIN_BUILD"
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S examples/plugin -B "$PLUGIN_BUILD" "${GEN[@]}" -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON > "$TMP/configure.log" 2>&1 || { cat "$TMP/configure.log"; fail "configure examples/plugin"; }
start=$(date +%s)
cmake --build "$PLUGIN_BUILD" -j "${JOBS:-2}" || fail "build examples/plugin"
echo "built in $(( $(date +%s) - start )) s"
# The method header compiled against the installed headers alone, not this checkout's.
grep -q -- "-I$PREFIX/include\|-isystem $PREFIX/include" "$PLUGIN_BUILD/compile_commands.json" || fail "the plugin did not compile against $PREFIX/include"
! grep -q -- "$SRC/include\|$SRC/src\|$SRC/tools" "$PLUGIN_BUILD/compile_commands.json" || fail "the plugin's compiler saw the source tree"
EXE=$PLUGIN_BUILD/my_vlmadapt

step "my_vlmadapt methods clip_adapter"
"$EXE" methods clip_adapter > "$TMP/methods.txt" 2>&1 || { cat "$TMP/methods.txt"; fail "my_vlmadapt methods clip_adapter"; }
cat "$TMP/methods.txt"
grep -q "^clip_adapter: " "$TMP/methods.txt" || fail "clip_adapter is not registered"
"$EXE" methods coop > /dev/null 2>&1 || fail "the built-in methods are missing from my_vlmadapt"
(cd /tmp && env -u VLMADAPT_MODELS "$EXE" info default) 2>&1 | grep -qF "file:         $MODEL" || fail "my_vlmadapt info default did not resolve to $MODEL"

step "my_vlmadapt train clip_adapter, 1 shot, 1 epoch, 200 test images"
(cd /tmp && env -u VLMADAPT_MODELS "$EXE" train --recipe "$PREFIX/share/vlmadapt/recipes/datasets/fashion_mnist.ini" \
   --recipe "$SRC/examples/plugin/clip_adapter.ini" \
   --set data.shots=1 train.epochs=1 data.test_limit=200 output="$TMP/runs") > "$TMP/train.txt" 2>&1
rc=$?
tail -n 25 "$TMP/train.txt"
[ $rc -eq 0 ] || fail "my_vlmadapt train exited with $rc"
grep -q "^test: top-1 [0-9.]*% over 200 images" "$TMP/train.txt" || fail "no test accuracy printed"

echo "test_plugin: PASS ($(grep -o '^test: top-1 [0-9.]*%' "$TMP/train.txt"))"
