#!/usr/bin/env bash
# Installs everything sdtune needs on a fresh Debian 12 machine, then builds it.
# Idempotent: each step checks first, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(cmake ninja-build g++ ccache nlohmann-json3-dev libcli11-dev libtomlplusplus-dev
              libgtest-dev clang-format libutf8proc-dev libpcre2-dev libvips-dev pkg-config fonts-dejavu-core
              libprotobuf-dev protobuf-compiler libxxhash-dev
              clang libclang-rt-dev  # clang + libFuzzer: the fuzz targets (fuzz/)
              libyaml-dev  # the LDM .yaml configs A1111 keeps beside single-file checkpoints
              libcurl4-openssl-dev  # sdtune caption: OpenAI-compatible vision-language APIs
              libcpp-httplib-dev  # sdtune serve: the HTTP server
              chromium  # test-only: the headless browser that drives serve's web page
              libgloo-dev)  # Gloo's headers for c10d's Gloo process group (the wheel has its library)
# Python: torch supplies LibTorch (its bundled C++ library). diffusers/transformers/open-clip-torch
# are test-only references; open-clip-torch also carries the real CLIP BPE vocabulary; tensorboard
# (test-only) reads back the event files sdtune writes.
# pyarrow supplies Arrow/Parquet C++ (its bundled libarrow, libparquet and headers) for Hugging
# Face parquet datasets.
PY_PACKAGES=(torch==2.15.0 diffusers==0.42.1 transformers==5.23.0 open-clip-torch==3.3.0
             safetensors numpy pillow pytest accelerate pyarrow==26.0.1
             tensorboard==2.21.0 peft==0.21.2
             torchvision  # test-only: transformers 5's BLIP image processor resizes through it
             webuiapi==0.9.17  # test-only: an A1111 API client, against `sdtune serve`
             playwright==1.65.2)  # test-only: drives Debian's chromium (no browser download)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PY=${PYTHON:-python3}
if ! $PY - "${PY_PACKAGES[@]}" <<'PYEOF'
import sys, importlib.metadata as md
for spec in sys.argv[1:]:
    name, _, ver = spec.partition("==")
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(1)
    if ver and have != ver:
        sys.exit(1)
PYEOF
then
  echo "setup: installing Python packages"
  $PY -m pip install -q "${PY_PACKAGES[@]}"
fi

# Build (Release: the tests run real models). ccache + precompiled headers keep rebuilds short;
# the base dir makes cache hits survive a fresh clone in another folder, and the sloppiness lets
# ccache cache compiles that use the precompiled header.
export CCACHE_BASEDIR="$PWD" CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
TORCH_PREFIX=$($PY -c 'import torch;print(torch.utils.cmake_prefix_path)')
BUILD=${BUILD_DIR:-build}
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
    -DSDTUNE_PYTHON="$PY" \
    > "$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log"; exit 1; }
fi
cmake --build "$BUILD"
