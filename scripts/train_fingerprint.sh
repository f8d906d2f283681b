#!/usr/bin/env bash
# Fingerprints of fixed CPU training runs on the shipped tiny base model: the SHA-256 of every
# weight and training-state file that each run writes. A refactor of the trainer must leave them
# bitwise the same: run this before and after, and compare.
#
#   scripts/train_fingerprint.sh [OUT]     (OUT: build/fingerprint by default; prints "hash  file")
#
# The runs: full fine-tuning with EMA, gradient accumulation, a trained text encoder, min-SNR,
# random crops and flips, a checkpoint and a resume from it; the same with cached latents,
# buckets and cached text embeddings; DreamBooth with prior preservation (class images generated
# by the base model); LoRA on the UNet and the text encoder.
set -euo pipefail
cd "$(dirname "$0")/.."
SDTUNE=${SDTUNE:-build/sdtune}
BASE=world/base
OUT=${1:-build/fingerprint}
rm -rf "$OUT" && mkdir -p "$OUT"
export SDTUNE_CACHE_DIR="$OUT/cache"

python3 world/shapes.py --out "$OUT/shapes" --count 8 --seed 3 --shapes circle,square,star >/dev/null
python3 world/shapes.py --out "$OUT/stars" --count 4 --seed 1 --shapes star --colours red \
  --backgrounds white >/dev/null
# Images of three aspect ratios, for the buckets.
python3 - "$OUT/shapes" "$OUT/aspects" <<'PY'
import json, shutil, sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True)
rows = [json.loads(l) for l in (src / "metadata.jsonl").read_text().splitlines()]
for i, row in enumerate(rows):
    w, h = [(64, 64), (96, 64), (64, 96)][i % 3]
    Image.open(src / row["file_name"]).convert("RGB").resize((w, h)).save(dst / row["file_name"])
shutil.copy(src / "metadata.jsonl", dst / "metadata.jsonl")
PY

common=(--model "$BASE" --resolution 64 --seed 7 --lr-warmup-steps 0 --quiet)
run() { echo "-- $*" >&2; "$SDTUNE" "$@" "${common[@]}" >/dev/null; }

run train --data "$OUT/shapes" --out "$OUT/full" --batch-size 2 --gradient-accumulation-steps 2 \
  --max-steps 4 --checkpointing-steps 2 --use-ema --ema-warmup --train-text-encoder --snr-gamma 5 \
  --random-flip --learning-rate 1e-4
run train --data "$OUT/shapes" --out "$OUT/full-resumed" --batch-size 2 \
  --gradient-accumulation-steps 2 --max-steps 4 --checkpointing-steps 2 --use-ema --ema-warmup \
  --train-text-encoder --snr-gamma 5 --random-flip --learning-rate 1e-4 \
  --resume-from-checkpoint "$OUT/full/checkpoint-2"
run train --data "$OUT/aspects" --out "$OUT/cached" --batch-size 2 --max-steps 3 \
  --checkpointing-steps 0 --enable-bucket --min-bucket-reso 32 --max-bucket-reso 128 \
  --bucket-reso-steps 32 --random-flip --cache-latents --cache-text-encoder-outputs --use-ema
run dreambooth --instance-data "$OUT/stars" --instance-prompt "a red sks shape" \
  --with-prior-preservation --class-prompt "a red shape" --class-data "$OUT/class-images" \
  --num-class-images 3 --class-inference-steps 4 --train-text-encoder --center-crop \
  --batch-size 2 --max-steps 3 --checkpointing-steps 0 --learning-rate 4e-4 --out "$OUT/dreambooth"
run train --data "$OUT/shapes" --out "$OUT/lora" --batch-size 2 --max-steps 3 \
  --checkpointing-steps 2 --lora-rank 4 --train-text-encoder --random-flip --learning-rate 1e-3

cd "$OUT"
find . -path ./cache -prune -o \( -name '*.safetensors' -o -name '*.png' \) -type f -print |
  grep -v -e '^./shapes/' -e '^./stars/' -e '^./aspects/' | sort | xargs sha256sum
