#!/usr/bin/env python3
"""Measures what training does in the tiny world, with the judge, and prints Markdown tables:

  1. base model prompt fidelity: images judged to show the prompted shape and colour, for the
     colour-shape pairs it was trained on and for those held out of its dataset (shapes.HELD_OUT);
  2. DreamBooth on ~8 red stars ("a red sks shape on a white background"), with and without prior
     preservation (class "a red shape on a white background", images the base model generates):
     instance fidelity (sks generations judged to be stars), and what happens to the class and to
     the shapes the base model knew (still judged correct), on the same seeds as the base model;
  3. how much the class prompt's images changed from the base model's, same seeds: the fraction
     whose judged shape changed, and the mean pixel change;
  4. the class prompt under classifier-free guidance 1, 3 and 7.5 for each of these models: what
     the images are judged to be, and how much of the image the shape covers (guidance extrapolates
     from the unconditional prediction along what fine-tuning changed, so it can exaggerate it);
  5. full fine-tuning on a style (striped fills, captions that do not name it): the fraction of
     images judged striped, and whether the prompts still give their shape and colour.

    python3 world/results.py [--base world/base] [--work build/world/results] [--samples 64]
"""

import argparse
import functools
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
import judge as judge_module  # noqa: E402
from judge import FOREGROUND_DISTANCE, background  # noqa: E402

INSTANCE = "a red sks shape on a white background"
CLASS = "a red shape on a white background"
GUIDANCE_SCALE = 7.5  # classifier-free guidance of every image but the sweep's
GUIDANCE = (1.0, 3.0, GUIDANCE_SCALE)  # the class prompt's guidance sweep


def sdtune(binary, *args):
    proc = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sdtune {args[0]} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


# Each image is judged once: the tables ask several questions of the same images.
judge = functools.lru_cache(maxsize=None)(judge_module.judge)


def generate(binary, model, prompt, out_dir, samples, steps=20, per_call=16, guidance=GUIDANCE_SCALE):
    """`samples` images of `prompt`: seeds 0, 1, ... (each call makes per_call images from one seed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for seed in range((samples + per_call - 1) // per_call):
        stem = out_dir / f"s{seed}"
        sdtune(binary, "generate", "--model", model, "--prompt", prompt, "--seed", seed, "--steps", steps,
               "--num-images", per_call, "--guidance-scale", guidance, "--out", f"{stem}.png", "--quiet")
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


def known_prompts(binary, model, out_dir, samples):
    """Images of the base model's captions (every colour-shape pair, white background), judged:
    {"trained", "held_out"}: the fractions showing the prompted shape and colour, over at least
    `samples` images each, of the pairs in the base model's dataset and of those held out of it;
    "striped": the fraction of all of them with striped fills."""
    right = {True: [], False: []}  # held out? -> verdicts
    striped = []
    for held_out in (False, True):
        pairs = [(s, c) for s, c in itertools.product(shapes.BASE_SHAPES, shapes.COLOURS)
                 if ((c, s) in shapes.HELD_OUT) == held_out]
        per = -(-samples // len(pairs))
        for shape, colour in pairs:
            files = generate(binary, model, shapes.caption(shape, colour, "white"), out_dir / f"{colour}-{shape}",
                             per, per_call=per)
            for f in files:
                verdict = judge(f)
                right[held_out].append(verdict["shape"] == shape and verdict["colour"] == colour)
                striped.append(verdict["striped"])
    return {"trained": np.mean(right[False]), "held_out": np.mean(right[True]), "striped": np.mean(striped)}


def changed_shapes(files_a, files_b):
    """The fraction of image pairs (same prompt and seed, two models) whose judged shape differs."""
    return np.mean([judge(a)["shape"] != judge(b)["shape"] for a, b in zip(files_a, files_b)])


def covered(files):
    """The mean fraction of the image that stands out from the background (the judge's foreground)."""
    out = []
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"), float)
        out.append((np.linalg.norm(rgb - background(rgb), axis=-1) > FOREGROUND_DISTANCE).mean())
    return np.mean(out)


def mean_change(files_a, files_b):
    a = np.stack([np.asarray(Image.open(f), float) for f in files_a])
    b = np.stack([np.asarray(Image.open(f), float) for f in files_b])
    return np.abs(a - b).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, default=HERE / "base")
    ap.add_argument("--work", type=Path, default=HERE.parent / "build" / "world" / "results")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=800, help="DreamBooth optimizer steps (world/demo.sh's)")
    ap.add_argument("--style-images", type=int, default=600, help="striped images for full fine-tuning")
    ap.add_argument("--style-steps", type=int, default=500, help="full fine-tuning optimizer steps")
    ap.add_argument("--bin", type=Path, default=HERE.parent / "build" / "sdtune")
    args = ap.parse_args()
    started = time.time()
    shutil.rmtree(args.work, ignore_errors=True)
    work = args.work
    stars = work / "stars"
    shapes.write_dataset(stars, 8, seed=1, shapes=("star",), colours=("red",), backgrounds=("white",),
                         template="a {colour} sks shape on a {background} background")

    rows = {}
    base_known = known_prompts(args.bin, args.base, work / "base" / "known", args.samples)
    base_class = generate(args.bin, args.base, CLASS, work / "base" / "class", args.samples)
    base_sks = generate(args.bin, args.base, INSTANCE, work / "base" / "sks", args.samples)
    rows["base model"] = dict(**base_known, sks_star=fraction(base_sks, "star"),
                              class_star=fraction(base_class, "star"), class_none=fraction(base_class, "none"),
                              changed=0.0, change=0.0)
    class_models = {"base model": (args.base, work / "base", base_class)}  # name -> (model, out, class images)
    for prior in (False, True):
        name = "DreamBooth, prior preservation " + ("on" if prior else "off")
        out = work / ("db-prior" if prior else "db-plain")
        extra = ["--with-prior-preservation", "--class-prompt", CLASS, "--class-data", work / "class-images",
                 "--num-class-images", 32, "--class-inference-steps", 20] if prior else []
        sdtune(args.bin, "dreambooth", "--model", args.base, "--instance-data", stars, "--instance-prompt", INSTANCE,
               "--out", out, "--resolution", shapes.SIZE, "--center-crop", "--batch-size", 4, "--max-steps", args.steps,
               "--learning-rate", 4e-4, "--lr-warmup-steps", 0, "--train-text-encoder", "--checkpointing-steps", 0,
               "--seed", 0, "--quiet", *extra)
        sks = generate(args.bin, out, INSTANCE, out / "gen-sks", args.samples)
        cls = generate(args.bin, out, CLASS, out / "gen-class", args.samples)
        class_models["prior preservation " + ("on" if prior else "off")] = (out, out, cls)
        rows[name] = dict(**known_prompts(args.bin, out, out / "gen-known", args.samples),
                          sks_star=fraction(sks, "star"), class_star=fraction(cls, "star"),
                          class_none=fraction(cls, "none"), changed=changed_shapes(base_class, cls),
                          change=mean_change(base_class, cls))
    # The class prompt under weaker guidance: how much of what the table shows is guidance's doing.
    sweep = {}
    for name, (model, out, cls) in class_models.items():
        for g in GUIDANCE:
            files = cls if g == GUIDANCE_SCALE else \
                generate(args.bin, model, CLASS, out / f"class-g{g:g}", args.samples, guidance=g)
            sweep[name, g] = {s: fraction(files, s) for s in ("star", "circle", "none")} | {"covered": covered(files)}
    db_seconds = time.time() - started

    # Full fine-tuning, the Naruto recipe in miniature: a dataset of one style (striped fills), its
    # captions saying only what is drawn; the UNet alone trains, as train_text_to_image.py does.
    striped = work / "striped"
    shapes.write_dataset(striped, args.style_images, seed=2, fills=("striped",))
    style = work / "style"
    sdtune(args.bin, "train", "--model", args.base, "--data", striped, "--out", style, "--resolution", shapes.SIZE,
           "--center-crop", "--cache-latents", "--cache-dir", work / "cache", "--batch-size", 32,
           "--max-steps", args.style_steps, "--learning-rate", 2e-4, "--lr-warmup-steps", 0,
           "--checkpointing-steps", 0, "--seed", 0, "--quiet")
    style_known = known_prompts(args.bin, style, style / "gen-known", args.samples)

    print(f"DreamBooth on 8 red stars, \"{INSTANCE}\", {args.steps} steps (text encoder trained too); class "
          f"\"{CLASS}\"; {args.samples} samples per prompt kind, seeds 0, 1, ...\n")
    print(f"| model | trained pairs judged correct | held-out pairs judged correct | \"{INSTANCE}\" judged a star | "
          f"\"{CLASS}\" judged a star | \"{CLASS}\" judged no shape (cut off or too large) | class images whose judged shape "
          f"changed | class images' mean pixel change |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['trained']:.0%} | {r['held_out']:.0%} | {r['sks_star']:.0%} | {r['class_star']:.0%} | "
              f"{r['class_none']:.0%} | {r['changed']:.0%} | {r['change']:.1f} |")
    print(f"\n\"{CLASS}\" by guidance scale, {args.samples} images each (same seeds): judged star / circle / no shape, "
          f"and the mean fraction of the image the shape covers:\n")
    print("| model | " + " | ".join(f"guidance {g:g}" for g in GUIDANCE) + " |")
    print("| --- |" + " --- |" * len(GUIDANCE))
    for name in class_models:
        cells = [f"{r['star']:.0%} / {r['circle']:.0%} / {r['none']:.0%}, covers {r['covered']:.0%}"
                 for r in (sweep[name, g] for g in GUIDANCE)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nFull fine-tuning on {args.style_images} striped shapes (captions without the style), "
          f"{args.style_steps} steps at batch 32, UNet only:\n")
    print("| model | images judged striped | trained pairs judged correct | held-out pairs judged correct |")
    print("| --- | --- | --- | --- |")
    for name, r in (("base model", base_known), ("fine-tuned on striped shapes", style_known)):
        print(f"| {name} | {r['striped']:.0%} | {r['trained']:.0%} | {r['held_out']:.0%} |")
    print(f"\n{time.time() - started:.0f} s ({db_seconds:.0f} s to the end of the DreamBooth rows)")

if __name__ == "__main__":
    main()
