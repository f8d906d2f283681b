#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool) after bench/gpu_prepare.sh, from the repository root:
# builds sdtune against that machine's own torch, checks CUDA numerics against diffusers on the
# same card, and runs the GPU benchmarks. Everything it reports goes to $OUT/gpu_report.txt.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_report.txt") 2>&1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'

# Dependencies: our C++ packages unpacked outside /, diffusers as a wheel.
mkdir -p /tmp/deps && for f in .deps/*.deb; do dpkg -x "$f" /tmp/deps; done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site

# protoc and the unpacked shared libraries (protobuf, toml++) load from /tmp/deps.
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/tmp/deps/usr/bin:$PATH
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
start=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DSDTUNE_TESTS=OFF \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;/tmp/deps/usr" -DCMAKE_LIBRARY_ARCHITECTURE=x86_64-linux-gnu \
  > "$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j 16 --target sdtune_cli sdtune_bench_unet sdtune_bench_train_step || exit 1
echo "build: $(( $(date +%s) - start )) s"

echo "== CUDA parity (sdtune forward --device cuda vs diffusers on the same card)"
SDTUNE_BIN=build-gpu/sdtune timeout 240 python3 bench/gpu_check.py

echo "== UNet forward benchmark: SD 1.5, 512x512 (64x64 latents), fp16, batch 2 and 1"
for b in 2 1; do
  SDTUNE_BENCH_UNET=build-gpu/sdtune_bench_unet timeout 150 python3 bench/unet_forward.py \
    --device cuda --dtype fp16 --batch $b --warmup 5 --iters 30
done

echo "== Generation benchmark: SD 1.5, 512x512, fp16, 1 image (CFG), 30 steps PNDM"
SDTUNE_BIN=build-gpu/sdtune timeout 200 python3 bench/generate.py --device cuda --dtype fp16

echo "== Training-step benchmark: SD 1.5, 512x512, bf16, batch 8 (plain, then gradient checkpointing)"
# The first run also writes the random SD 1.5 UNet folder (~3.4 GB) that the second reuses.
for gc in "" --gradient-checkpointing; do
  SDTUNE_BENCH_TRAIN_STEP=build-gpu/sdtune_bench_train_step timeout 300 python3 bench/train_step.py \
    --device cuda --config sd15 --mixed-precision bf16 --batch 8 --warmup 3 --iters 10 $gc
done
