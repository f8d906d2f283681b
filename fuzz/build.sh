#!/usr/bin/env bash
# Configures and builds the fuzz targets (fuzz/CMakeLists.txt) in build-fuzz/ with clang,
# libFuzzer, ASan and UBSan, at low priority. Used by bench/fuzz.sh and scripts/fuzz_smoke.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -f build-fuzz/build.ninja ]]; then
  CXX=${CXX:-clang++} nice -n 10 cmake -S fuzz -B build-fuzz -G Ninja >build-fuzz.configure.log 2>&1 \
    || { cat build-fuzz.configure.log; exit 1; }
fi
nice -n 10 ninja -C build-fuzz -j "$(nproc)" >build-fuzz/ninja.log 2>&1 \
  || { tail -n 60 build-fuzz/ninja.log; exit 1; }
