#!/usr/bin/env python3
"""The tiny world's images: one shape (circle, square, triangle, star) of a named colour, flat or
striped, at a random position and size, on a plain background, captioned "a red circle on a white
background" (the fill is a style, not in the caption). Deterministic from a seed; written as an
image folder with metadata.jsonl (diffusers' imagefolder layout, which `sdtune train --data`
reads).

    python3 world/shapes.py --out data/shapes --count 2000 --seed 0
    python3 world/shapes.py --out data/stars --count 8 --seed 1 --shapes star --caption "a {colour} sks shape"
    python3 world/shapes.py --out data/striped --count 500 --seed 2 --fills striped
"""

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
# Saturated, well-separated colours (the judge names a shape's colour by the nearest of these).
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15)}
BASE_SHAPES = ("circle", "square", "triangle")  # what the base model is trained on
SHAPES = BASE_SHAPES + ("star",)  # the star is the concept DreamBooth teaches
# Colour-shape pairs the base model never sees (each colour and each shape still does, in other
# pairs): its captions test whether the model composes what it learned.
HELD_OUT = (("green", "triangle"), ("red", "square"), ("yellow", "circle"))
# Fills: flat (the base model's world) or striped (the style full fine-tuning teaches).
FILLS = ("flat", "striped")
STRIPE_PERIOD = 8  # rows: 4 of the colour, then 4 of the mix (two latent rows of the VAE)
STRIPE_MIX = 0.4  # the share of the background in the mixed bands


def outline(shape, cx, cy, r):
    """The shape's polygon (or circle's box) centred at (cx, cy) with 'radius' r (half its width)."""
    if shape == "circle":
        return [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "triangle":  # upright, equilateral-ish: apex up, base down
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":  # five points, apex up; inner radius 0.45 r
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape '{shape}' (known: {', '.join(SHAPES)})")


def render(shape, colour, background, cx, cy, r, size=SIZE, fill="flat"):
    """uint8 [size, size, 3]: the shape, filled, without antialiasing (flat colours only).
    fill "striped": horizontal bands, STRIPE_PERIOD rows long, alternate the colour and the colour
    mixed STRIPE_MIX with the background (lighter on white, darker on black); the bands are
    fixed to the image's rows, so they line up with the VAE's 4-pixel latent grid."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    box = outline(shape, cx, cy, r)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    else:
        draw.polygon(box, fill=255)
    inside = np.asarray(mask) > 0
    pixels = np.broadcast_to(np.asarray(BACKGROUNDS[background], np.uint8), (size, size, 3)).copy()
    colour_rgb = np.asarray(COLOURS[colour], float)
    if fill == "flat":
        pixels[inside] = colour_rgb
    elif fill == "striped":
        rows = np.arange(size)[:, None].repeat(size, 1)
        band = (rows // (STRIPE_PERIOD // 2)) % 2 == 1
        mixed = (1 - STRIPE_MIX) * colour_rgb + STRIPE_MIX * np.asarray(BACKGROUNDS[background], float)
        pixels[inside & ~band] = colour_rgb
        pixels[inside & band] = np.round(mixed)
    else:
        raise ValueError(f"unknown fill '{fill}' (known: {', '.join(FILLS)})")
    return pixels


def caption(shape, colour, background, template="a {colour} {shape} on a {background} background"):
    return template.format(shape=shape, colour=colour, background=background)


def sample(rng, shapes=BASE_SHAPES, colours=tuple(COLOURS), backgrounds=tuple(BACKGROUNDS), size=SIZE,
           exclude=()):
    """One random scene: (shape, colour, background, cx, cy, r), the shape fully inside the image,
    never one of the (colour, shape) pairs in `exclude`."""
    while True:
        shape, colour, background = rng.choice(shapes), rng.choice(colours), rng.choice(backgrounds)
        if (colour, shape) not in exclude:
            break
    r = rng.uniform(0.18, 0.32) * size
    cx, cy = (rng.uniform(r + 2, size - r - 2) for _ in range(2))
    return shape, colour, background, cx, cy, r


def write_dataset(out, count, seed, shapes=BASE_SHAPES, colours=tuple(COLOURS), backgrounds=tuple(BACKGROUNDS),
                  template="a {colour} {shape} on a {background} background", exclude=(), fills=("flat",)):
    """Writes count images and metadata.jsonl (file_name, text, and the scene's labels) to out.
    Each image's fill is drawn from `fills` (no draw for a single fill: flat datasets stay as they
    were before fills existed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        shape, colour, background, cx, cy, r = sample(rng, shapes, colours, backgrounds, exclude=exclude)
        fill = rng.choice(fills) if len(fills) > 1 else fills[0]
        name = f"{i:05d}.png"
        Image.fromarray(render(shape, colour, background, cx, cy, r, fill=fill)).save(out / name)
        rows.append({"file_name": name, "text": caption(shape, colour, background, template),
                     "shape": shape, "colour": colour, "background": background, "fill": fill})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shapes", default=",".join(BASE_SHAPES))
    ap.add_argument("--colours", default=",".join(COLOURS))
    ap.add_argument("--backgrounds", default=",".join(BACKGROUNDS))
    ap.add_argument("--caption", default="a {colour} {shape} on a {background} background",
                    help="caption template ({shape}, {colour}, {background})")
    ap.add_argument("--fills", default="flat", help="fills drawn at random per image: flat, striped or both")
    ap.add_argument("--hold-out", action="store_true",
                    help="leave out the HELD_OUT colour-shape pairs (" + ", ".join(" ".join(p) for p in HELD_OUT) + ")")
    args = ap.parse_args()
    rows = write_dataset(args.out, args.count, args.seed, tuple(args.shapes.split(",")),
                         tuple(args.colours.split(",")), tuple(args.backgrounds.split(",")), args.caption,
                         HELD_OUT if args.hold_out else (), tuple(args.fills.split(",")))
    print(f"{len(rows)} images in {args.out}")


if __name__ == "__main__":
    main()
