#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this). On a fresh machine it installs and
# builds first (scripts/setup.sh), so it works from a clean clone.
#   1. formatting (clang-format) of our C++;
#   2. C++ unit tests (GoogleTest) of the Release build;
#   3. the torch-free core's unit tests again under AddressSanitizer + UBSan (file parsers,
#      configs, tokenizer: where malformed input meets memory);
#   4. pytest: parity against diffusers/transformers, tokenizer parity, CLI behaviour.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== clang-format"
files=$(git ls-files 'src/*.cpp' 'src/*.h' 'include/*.h' 'tests/*.cpp' 'bench/*.cpp')
clang-format --dry-run -Werror $files

echo "== C++ unit tests"
build/sdtune_core_tests --gtest_brief=1
build/sdtune_tests --gtest_brief=1

echo "== C++ core unit tests under ASan+UBSan"
export CCACHE_BASEDIR="$PWD" CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
if [ ! -f build-asan/build.ninja ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSDTUNE_WITH_TORCH=OFF -DSDTUNE_SANITIZE=ON > build-asan.configure.log
fi
cmake --build build-asan
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build-asan/sdtune_core_tests --gtest_brief=1

echo "== pytest"
python3 -m pytest -q "$@"
