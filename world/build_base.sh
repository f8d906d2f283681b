#!/usr/bin/env bash
# Builds the tiny world's base model from nothing, with sdtune's own commands, into world/base/:
#   1. the dataset: circles, squares and triangles in four colours on two backgrounds, three
#      colour-shape pairs held out;
#   2. `sdtune init`: random weights for world/base-config (SD's architecture, scaled down) with
#      the real CLIP tokenizer (from open-clip-torch's BPE vocabulary);
#   3. `sdtune train-vae`: the VAE learns to reconstruct the images (64x64 -> 16x16x4 latents), flat
#      and striped ones: it is the world's image codec, and striped fills are the style that full
#      fine-tuning teaches later (world/results.py);
#   4. `sdtune train --train-text-encoder`: UNet and text encoder learn the captions from scratch.
# Step counts can be lowered for a quick try: VAE_STEPS=100 UNET_STEPS=200 world/build_base.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SDTUNE=${SDTUNE:-build/sdtune}
WORK=${WORK:-build/world}
OUT=${OUT:-world/base}
IMAGES=${IMAGES:-3000}
VAE_STEPS=${VAE_STEPS:-800}
UNET_STEPS=${UNET_STEPS:-12000}
mkdir -p "$WORK"

echo "== dataset"
# --hold-out: three colour-shape pairs stay out (world/shapes.py HELD_OUT), for the held-out figure.
python3 world/shapes.py --out "$WORK/data" --count "$IMAGES" --seed 0 --hold-out
python3 world/shapes.py --out "$WORK/vae-data" --count "$IMAGES" --seed 1 --fills flat,striped --shapes circle,square,triangle,star

echo "== init"
rm -rf "$WORK/configs" && cp -r world/base-config "$WORK/configs"
python3 -c "import sys; sys.path.insert(0, 'tests/helpers'); from clip_vocab import write_clip_tokenizer; write_clip_tokenizer(sys.argv[1])" \
  "$WORK/configs/tokenizer"
"$SDTUNE" init --config "$WORK/configs" --out "$WORK/init" --seed 0

echo "== train-vae"
"$SDTUNE" train-vae --model "$WORK/init" --data "$WORK/vae-data" --out "$WORK/vae" --resolution 64 \
  --batch-size 16 --max-steps "$VAE_STEPS" --learning-rate 2e-3 --lr-warmup-steps 100 --kl-weight 1e-3 \
  --seed 0 --log-every 50

echo "== train (UNet and text encoder from scratch)"
"$SDTUNE" train --model "$WORK/vae" --data "$WORK/data" --out "$WORK/base" --resolution 64 --center-crop \
  --cache-latents --cache-dir "$WORK/cache" --batch-size 32 --max-steps "$UNET_STEPS" --learning-rate 1e-3 \
  --lr-scheduler cosine --lr-warmup-steps 200 --adam-weight-decay 0.01 --train-text-encoder \
  --checkpointing-steps 1000 --checkpoints-total-limit 1 --log-every 50 --seed 0 \
  --validation-prompt "a red circle on a white background" --validation-prompt "a blue square on a black background" \
  --validation-prompt "a yellow triangle on a white background" --validation-steps 1000

echo "== copy to $OUT"
rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
for part in model_index.json scheduler tokenizer text_encoder unet vae; do cp -r "$WORK/base/$part" "$OUT.tmp/"; done
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
du -sh "$OUT"
