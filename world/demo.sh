#!/usr/bin/env bash
# The README's main job: DreamBooth teaches the shipped tiny base model (world/base) a shape it has
# never seen, a star, from 8 images, with prior preservation on the class "shape", then draws a
# comparison grid: base model against fine-tuned model, "a red sks shape" against "a red shape",
# four seeds. The judge (world/judge.py) then counts stars among 16 images of each prompt.
#
#   world/demo.sh                      (after scripts/setup.sh; OUT=build/demo by default)
#
# Rerunning retrains into a fresh OUT/finetuned and reuses the class images already in OUT/class-images.
set -euo pipefail
cd "$(dirname "$0")/.."
SDTUNE=${SDTUNE:-build/sdtune}
BASE=${BASE:-world/base}
OUT=${OUT:-build/demo}
STEPS=${STEPS:-800}  # 300 teach prior-preserving DreamBooth only half the stars (docs/world.md)
INSTANCE="a red sks shape on a white background"
CLASS="a red shape on a white background"
started=$(date +%s)

echo "== 8 images of red stars, the new concept, captioned \"$INSTANCE\" ($OUT/stars)"
rm -rf "$OUT/stars"
python3 world/shapes.py --out "$OUT/stars" --count 8 --seed 1 --shapes star --colours red \
  --backgrounds white --caption "a {colour} sks shape on a {background} background"

echo "== DreamBooth with prior preservation ($STEPS steps; class images of \"$CLASS\" from the base model)"
rm -rf "$OUT/finetuned"
"$SDTUNE" dreambooth --model "$BASE" --instance-data "$OUT/stars" --instance-prompt "$INSTANCE" \
  --with-prior-preservation --class-prompt "$CLASS" --class-data "$OUT/class-images" \
  --num-class-images 32 --class-inference-steps 20 --train-text-encoder \
  --resolution 64 --center-crop --batch-size 4 --max-steps "$STEPS" --learning-rate 4e-4 \
  --lr-warmup-steps 0 --checkpointing-steps 0 --seed 0 --out "$OUT/finetuned"

echo "== comparison grid: base / fine-tuned x \"a red sks shape\" / \"a red shape\" x 4 seeds"
rm -f "$OUT/comparison.png"
"$SDTUNE" grid --model "$BASE" --model "$OUT/finetuned" --prompt "$INSTANCE" --prompt "$CLASS" \
  --seed 1 --seed 2 --seed 3 --seed 4 --steps 20 --out "$OUT/comparison.png" --quiet

echo "== the judge: stars among 16 images of each prompt (seeds 1-2, 8 images each)"
for model in "$BASE" "$OUT/finetuned"; do
  for prompt in "$INSTANCE" "$CLASS"; do
    dir="$OUT/judged/$(basename "$model")/${prompt// /-}"
    rm -rf "$dir" && mkdir -p "$dir"
    for seed in 1 2; do
      "$SDTUNE" generate --model "$model" --prompt "$prompt" --seed "$seed" --steps 20 --num-images 8 \
        --out "$dir/s$seed.png" --quiet
    done
    python3 - "$model" "$prompt" "$dir" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "world")
from judge import judge
model, prompt, folder = sys.argv[1:]
verdicts = [judge(f)["shape"] for f in sorted(Path(folder).glob("*.png"))]
print(f"  {model:<20} \"{prompt}\": {verdicts.count('star')}/{len(verdicts)} judged stars")
PY
  done
done

echo "== done in $(($(date +%s) - started)) s: $OUT/comparison.png (rows: model x prompt, columns: seeds)"
