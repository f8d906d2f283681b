#!/usr/bin/env bash
# Run HERE (the development machine) before a device call: gathers what the GPU machine lacks into
# ignored folders that the call carries: .deps/ (Debian packages of our C++ dependencies, unpacked
# there outside /) and .whl/ (diffusers, and open-clip-torch for the CLIP vocabulary: that machine's
# Python lacks both). libvips, with its ~150 packages, does not travel: the GPU build is made with
# -DSDTUNE_IMAGES=OFF (tensors only).
# .fixture/ (a tiny pipeline, images and the latent/text caches that let the vips-less GPU build
# train) comes from bench/gpu_train_check.py --prepare, which needs build/sdtune.
# Then: device run with carry [".deps", ".whl", ".fixture"] and command "bash bench/gpu_check.sh".
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.deps/' .git/info/exclude 2>/dev/null || echo '/.deps/' >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qx '/.fixture/' .git/info/exclude 2>/dev/null || echo '/.fixture/' >> .git/info/exclude
rm -rf .deps .whl .fixture && mkdir -p .deps .whl
(cd .deps && apt-get download nlohmann-json3-dev libcli11-dev libutf8proc-dev libutf8proc2 libpcre2-dev libpcre2-8-0 \
  libprotobuf-dev protobuf-compiler libprotobuf32 libprotoc32 libtomlplusplus-dev libtomlplusplus3 \
  libxxhash-dev libxxhash0 libyaml-dev libyaml-0-2 \
  libgloo-dev)  # libgloo-dev: Gloo's headers, for data-parallel runs
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
  diffusers==0.42.1 open-clip-torch==3.3.0
python3 bench/gpu_train_check.py --prepare .fixture
du -sh .deps .whl .fixture
