#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool) after bench/gpu_prepare.sh, from the repository root:
# builds sdtune against that machine's own torch, checks CUDA numerics against diffusers on the
# same card, and runs the GPU benchmarks. Everything it reports goes to $OUT/gpu_report.txt.
# Sections are independent: one that fails or times out does not stop the others.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_report.txt") 2>&1
export PYTHONUNBUFFERED=1
t0=$(date +%s)
section() { echo; echo "== [$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
(nvcc --version | tail -2; c++ --version | head -1; cmake --version | head -1) 2>&1

# Dependencies: our C++ packages unpacked outside /, diffusers as a wheel.
mkdir -p /tmp/deps && for f in .deps/*.deb; do dpkg -x "$f" /tmp/deps; done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site

# protoc and the unpacked shared libraries (protobuf, toml++) load from /tmp/deps.
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/tmp/deps/usr/bin:$PATH
TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
section "build (${BUILD_TYPE:-Release}; no libvips, no Arrow, no libcurl, no cpp-httplib: tensors in and out only)"
# SDTUNE_WERROR=OFF: that machine's compiler is not CI's, and its new warnings must not stop a run.
# BUILD_TYPE=RelWithDebInfo gives cuda-gdb line numbers when a crash is being chased.
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} -DSDTUNE_TESTS=OFF -DSDTUNE_IMAGES=OFF -DSDTUNE_HTTP=OFF -DSDTUNE_SERVE=OFF \
  -DSDTUNE_PYTHON=false -DSDTUNE_WERROR=OFF -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;/tmp/deps/usr" \
  -DCMAKE_LIBRARY_ARCHITECTURE=x86_64-linux-gnu > "$OUT/configure.log" 2>&1 \
  || { tail -60 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j 16 --target ${BUILD_TARGETS:-sdtune_cli sdtune_bench_unet sdtune_bench_train_step} > "$OUT/build.log" 2>&1 \
  || { grep -B2 -A12 -m5 'error' "$OUT/build.log" | head -120; exit 1; }
grep -c 'warning:' "$OUT/build.log" | sed 's/^/compiler warnings: /'

# Sections, all by default; SECTIONS="train parity" runs those alone (after the build). One call
# of the device tool runs at most 10 minutes: give it SECTIONS="speed" first (the build, ~4
# minutes on a fresh machine, is kept while the machine stays warm), then SECTIONS="speed-levers".
SECTIONS=${SECTIONS:-"speed speed-levers linking train parity bench-train bench-sdxl ddp-overhead bench-deterministic lora-memory bench-unet"}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

if want speed; then
  # Issue 21's table: training (batch 8 and 32) and 50-step generation against diffusers eager and
  # torch.compile on this card, with FLOP counts for MFU and sdtune's profile by category; the
  # generation rows include sdtune's CUDA-graph path, its image compared with the plain one.
  # About 8 minutes with the compilations. Chrome traces stay on the machine (/tmp/traces).
  section "speed: training SD 1.5, 512x512, bf16, cached latents, batch 8 (diffusers eager, compiled; MFU; sdtune profiled)"
  SDTUNE_BENCH_TRAIN_STEP=build-gpu/sdtune_bench_train_step timeout 240 python3 bench/train_step.py \
    --device cuda --config sd15 --mixed-precision bf16 --batch 8 --warmup 3 --iters 10 \
    --flops --diffusers-compile --profile /tmp/traces
  section "speed: the same at batch 32"
  SDTUNE_BENCH_TRAIN_STEP=build-gpu/sdtune_bench_train_step timeout 240 python3 bench/train_step.py \
    --device cuda --config sd15 --mixed-precision bf16 --batch 32 --warmup 3 --iters 5 \
    --flops --diffusers-compile
  section "speed: generation SD 1.5, 512x512, 50 steps, CFG 7.5, fp16, batch 1, end to end (diffusers eager, compiled; sdtune plain, CUDA graphs, + NHWC; images compared)"
  SDTUNE_BIN=build-gpu/sdtune timeout 300 python3 bench/generate.py --device cuda --dtype fp16 \
    --end-to-end --steps 50 --runs 3 --compile --profile /tmp/traces
fi

if want speed-levers; then
  # Each training lever alone and together, against the plain step in the same run (~4 minutes).
  for lever in "--channels-last" "--attention-backend cudnn" "--channels-last --attention-backend cudnn"; do
    section "speed lever: training SD 1.5, 512x512, bf16, batch 8, sdtune with $lever"
    SDTUNE_BENCH_TRAIN_STEP=build-gpu/sdtune_bench_train_step timeout 150 python3 bench/train_step.py \
      --device cuda --config sd15 --mixed-precision bf16 --batch 8 --warmup 3 --iters 10 $lever
  done
  section "speed lever: UNet forward SD 1.5, 512x512, fp16, batch 2, NCHW and NHWC on both sides, attention kernels"
  SDTUNE_BENCH_UNET=build-gpu/sdtune_bench_unet timeout 90 python3 bench/unet_forward.py \
    --device cuda --dtype fp16 --batch 2 --warmup 5 --iters 30 --channels-last --attention-backends cudnn,efficient
fi

if want linking; then
  section "linking: the first libraries of sdtune, and where its std::filesystem calls bind"
  readelf -d build-gpu/sdtune | grep NEEDED | head -4
  nm -D --defined-only "$(dirname "$(python3 -c 'import torch;print(torch.__file__)')")/lib/libtorch.so" \
    | grep -c '_ZNSt10filesystem' | sed 's/^/std::filesystem symbols libtorch.so exports: /'
  LD_DEBUG=bindings LD_BIND_NOW=1 build-gpu/sdtune --help 2>&1 | grep 'file build-gpu/sdtune' \
    | grep '_ZNSt10filesystem' | sed 's/.*binding file //' | awk '{print $4}' | sort | uniq -c | head -12
fi

if want train; then
  section "sdtune train --device cuda: fp32/bf16/fp16 through the caches, resume, diffusers loads it"
  if [ -d .fixture ]; then
    SDTUNE_BIN=build-gpu/sdtune timeout 300 python3 bench/gpu_train_check.py --run .fixture
  else
    echo "no .fixture: run 'python3 bench/gpu_train_check.py --prepare .fixture' here and carry it"
  fi
fi

if want parity; then
  section "CUDA parity (sdtune forward --device cuda vs diffusers on the same card)"
  SDTUNE_BIN=build-gpu/sdtune timeout 120 python3 bench/gpu_check.py
fi

if want bench-train; then
  section "CUDA training step, fp32 (scaled SD 1.5-shaped UNet, batch 2): first-step loss vs diffusers"
  SDTUNE_BENCH_TRAIN_STEP=build-gpu/sdtune_bench_train_step timeout 120 python3 bench/train_step.py \
    --device cuda --config scaled --batch 2 --warmup 1 --iters 3
  section "Training-step benchmark: SD 1.5, 512x512, bf16, batch 8 (plain, then gradient checkpointing)"
  # The first run also writes the random SD 1.5 UNet folder (~3.4 GB) that the second reuses.
  for gc in "" --gradient-checkpointing; do
    SDTUNE_BENCH_TRAIN_STEP=build-gpu/sdtune_bench_train_step timeout 200 python3 bench/train_step.py \
      --device cuda --config sd15 --mixed-precision bf16 --batch 8 --warmup 3 --iters 10 $gc
  done
fi

if want ddp-overhead; then
  section "Data-parallel path, one NCCL rank, against the plain step: SD 1.5, 512x512, bf16, batch 8 (full, then LoRA rank 4)"
  # Reuses bench-train's random SD 1.5 UNet folder (made here when bench-train did not run).
  for lora in 0 4; do
    SDTUNE_BENCH_TRAIN_STEP=build-gpu/sdtune_bench_train_step timeout 240 python3 bench/ddp_overhead.py \
      --device cuda --config sd15 --mixed-precision bf16 --batch 8 --warmup 3 --iters 10 --rounds 2 --lora-rank $lora
  done
fi

if want bench-deterministic; then
  section "What deterministic kernels cost: SD 1.5, 512x512, bf16, batch 8, default vs deterministic (both sides)"
  for det in "" --deterministic; do
    SDTUNE_BENCH_TRAIN_STEP=build-gpu/sdtune_bench_train_step timeout 200 python3 bench/train_step.py \
      --device cuda --config sd15 --mixed-precision bf16 --batch 8 --warmup 3 --iters 10 $det
  done
fi

if want lora-memory; then
  section "LoRA vs full fine-tuning: SD 1.5 UNet, 512x512, bf16, batch 8 (parameters, optimizer state, peak memory)"
  SDTUNE_BENCH_TRAIN_STEP=build-gpu/sdtune_bench_train_step timeout 200 python3 bench/lora_memory.py \
    --device cuda --mixed-precision bf16 --latent 64 --batch 8 --iters 3 --ranks 4,64
fi

if want bench-sdxl; then
  section "SDXL at 1024x1024 (128x128 latents), bf16, gradient checkpointing, batch 1: full fine-tuning with AdamW, then Adafactor (s/step, peak memory, against diffusers)"
  # Writes the random SDXL UNet folder (~10 GB) once; the Adafactor run reuses it.
  for opt in adamw adafactor; do
    SDTUNE_BENCH_TRAIN_STEP=build-gpu/sdtune_bench_train_step timeout 300 python3 bench/train_step.py \
      --device cuda --config sdxl --mixed-precision bf16 --batch 1 --gradient-checkpointing --warmup 2 --iters 5 \
      --optimizer $opt
  done
  section "SDXL UNet forward: 1024x1024, fp16, batch 2"
  SDTUNE_BENCH_UNET=build-gpu/sdtune_bench_unet timeout 90 python3 bench/unet_forward.py \
    --device cuda --dtype fp16 --batch 2 --sdxl --warmup 3 --iters 10
fi

if want bench-unet; then
  section "UNet forward benchmark: SD 1.5, 512x512 (64x64 latents), fp16, batch 2"
  SDTUNE_BENCH_UNET=build-gpu/sdtune_bench_unet timeout 60 python3 bench/unet_forward.py \
    --device cuda --dtype fp16 --batch 2 --warmup 5 --iters 30
fi
section "done"
