#!/usr/bin/env python3
"""Measures what training does in the tiny world, with the judge, and prints a Markdown table:

  1. base model prompt fidelity: images judged to show the prompted shape and colour, for the
     colour-shape pairs it was trained on and for those held out of its dataset (shapes.HELD_OUT);
  2. DreamBooth on ~8 red stars ("a red sks shape on a white background"), with and without prior
     preservation (class "a red shape on a white background", images the base model generates):
     instance fidelity (sks generations judged to be stars), and what happens to the class and to
     the shapes the base model knew (still judged correct), on the same seeds as the base model;
  3. the mean pixel change of the class prompt's images from the base model's, same seeds.

    python3 world/results.py [--base world/base] [--work build/world/results] [--samples 64]
"""

import argparse
import itertools
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import shapes  # noqa: E402
from judge import judge  # noqa: E402

INSTANCE = "a red sks shape on a white background"
CLASS = "a red shape on a white background"


def sdtune(binary, *args):
    proc = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sdtune {args[0]} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def generate(binary, model, prompt, out_dir, samples, steps=20, per_call=8):
    """`samples` images of `prompt`: seeds 0, 1, ... (each call makes per_call images from one seed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for seed in range((samples + per_call - 1) // per_call):
        stem = out_dir / f"s{seed}"
        sdtune(binary, "generate", "--model", model, "--prompt", prompt, "--seed", seed, "--steps", steps,
               "--num-images", per_call, "--out", f"{stem}.png", "--quiet")
        # One image is written as OUT itself, several as OUT-0.png, OUT-1.png, ...
        files += [stem.with_name(f"{stem.name}-{i}.png") for i in range(per_call)] if per_call > 1 else \
            [stem.with_name(f"{stem.name}.png")]
    return files[:samples]


def fraction(files, shape=None, colour=None):
    hits = 0
    for f in files:
        v = judge(f)
        hits += (shape is None or v["shape"] == shape) and (colour is None or v["colour"] == colour)
    return hits / len(files)


def known_prompts_correct(binary, model, out_dir, samples):
    """Fractions of images judged to show the prompted shape and colour, for the colour-shape pairs
    of the base model's dataset and for the pairs held out of it (white background)."""
    pairs = list(itertools.product(shapes.BASE_SHAPES, shapes.COLOURS))
    per = max(1, samples // len(pairs))
    right = {True: [], False: []}  # held out? -> verdicts
    for shape, colour in pairs:
        files = generate(binary, model, shapes.caption(shape, colour, "white"), out_dir / f"{colour}-{shape}", per,
                         per_call=per)
        right[(colour, shape) in shapes.HELD_OUT].append(fraction(files, shape, colour))
    return np.mean(right[False]), np.mean(right[True])


def mean_change(files_a, files_b):
    a = np.stack([np.asarray(Image.open(f), float) for f in files_a])
    b = np.stack([np.asarray(Image.open(f), float) for f in files_b])
    return np.abs(a - b).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, default=HERE / "base")
    ap.add_argument("--work", type=Path, default=HERE.parent / "build" / "world" / "results")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300, help="DreamBooth optimizer steps")
    ap.add_argument("--bin", type=Path, default=HERE.parent / "build" / "sdtune")
    args = ap.parse_args()
    started = time.time()
    shutil.rmtree(args.work, ignore_errors=True)
    work = args.work
    stars = work / "stars"
    shapes.write_dataset(stars, 8, seed=1, shapes=("star",), colours=("red",), backgrounds=("white",),
                         template="a {colour} sks shape on a {background} background")

    rows = {}
    base_known = known_prompts_correct(args.bin, args.base, work / "base" / "known", args.samples)
    base_class = generate(args.bin, args.base, CLASS, work / "base" / "class", args.samples)
    base_sks = generate(args.bin, args.base, INSTANCE, work / "base" / "sks", args.samples)
    rows["base model"] = dict(known=base_known[0], held_out=base_known[1], sks_star=fraction(base_sks, "star"),
                              class_star=fraction(base_class, "star"), change=0.0)
    for prior in (False, True):
        name = "DreamBooth, prior preservation " + ("on" if prior else "off")
        out = work / ("db-prior" if prior else "db-plain")
        extra = ["--with-prior-preservation", "--class-prompt", CLASS, "--class-data", work / "class-images",
                 "--num-class-images", 32, "--class-inference-steps", 20] if prior else []
        sdtune(args.bin, "dreambooth", "--model", args.base, "--instance-data", stars, "--instance-prompt", INSTANCE,
               "--out", out, "--resolution", shapes.SIZE, "--center-crop", "--batch-size", 4, "--max-steps", args.steps,
               "--learning-rate", 2e-4, "--lr-warmup-steps", 0, "--train-text-encoder", "--checkpointing-steps", 0,
               "--seed", 0, "--quiet", *extra)
        sks = generate(args.bin, out, INSTANCE, out / "gen-sks", args.samples)
        cls = generate(args.bin, out, CLASS, out / "gen-class", args.samples)
        known, held_out = known_prompts_correct(args.bin, out, out / "gen-known", args.samples)
        rows[name] = dict(known=known, held_out=held_out,
                          sks_star=fraction(sks, "star"), class_star=fraction(cls, "star"),
                          change=mean_change(base_class, cls))

    print(f"| model | trained pairs judged correct | held-out pairs judged correct | \"{INSTANCE}\" judged a star | "
          f"\"{CLASS}\" judged a star | class images' mean pixel change from the base model |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['known']:.0%} | {r['held_out']:.0%} | {r['sks_star']:.0%} | {r['class_star']:.0%} | {r['change']:.1f} |")
    print(f"\n{args.samples} samples per prompt kind; {args.steps} DreamBooth steps; {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
