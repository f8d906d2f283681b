#!/usr/bin/env python3
"""The tiny world's judge: names the shape and colour in an image by classical image analysis.

The background is the median colour of the image's border; the shape is the largest connected
region of pixels far from it. Its colour is the nearest named colour to the region's median pixel;
a region cut by the border, covering most of the image or not of one colour is no shape. Its
shape follows from its corners, the directions in which its outline reaches out from the
centroid (radial profile maxima: square 4, triangle 3, star 5, circle none), which blur rounds but
keeps, with solidity (area / convex hull: a star ~0.56) for a star whose arms blurred together.
Its fill is striped when the region's row profile oscillates at the stripes' period.

    python3 world/judge.py DIR            # every image of a folder with metadata.jsonl: accuracy
"""

import argparse
import json
import sys
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import BACKGROUNDS, COLOURS, STRIPE_PERIOD  # noqa: E402

FOREGROUND_DISTANCE = 80  # RGB distance from the background that makes a pixel part of a shape
MIN_AREA = 24  # pixels; smaller regions are noise, not a shape
MAX_AREA = 0.5  # of the image; a shape is drawn inside it, on a background
MAX_SPREAD = 80  # median RGB distance of the region's pixels from their median: shapes are flat
MAX_BORDER = 10  # region pixels on the image's border: more, and the shape is cut off
CORNER_PROMINENCE = 1.15  # a corner reaches this much farther out than the outline beside it
STAR_SOLIDITY = 0.88  # area / convex hull: a star ~0.56 (blurred ~0.8), convex shapes ~1
STRIPES = 0.1  # stripe score (see stripe_score) above which a fill is striped: clean stripes ~0.3


def nearest(rgb, palette):
    names = list(palette)
    d = [np.linalg.norm(np.asarray(palette[n], float) - rgb) for n in names]
    return names[int(np.argmin(d))]


def background(rgb):
    """The background colour of an RGB image [H, W, 3]: the median colour of its border pixels."""
    return np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0)


def largest_component(mask):
    """The largest 4-connected region of a boolean mask, as a boolean mask."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        region, queue = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def hull_area(points):
    """Area of the convex hull of 2-D points (Andrew's monotone chain, then the shoelace formula)."""
    pts = sorted(set(map(tuple, points)))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.asarray(lower[:-1] + upper[:-1], float)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def features(region):
    """(area, fill, solidity) of a region; pixels count as unit squares (their four corners)."""
    ys, xs = np.nonzero(region)
    area = float(len(ys))
    fill = area / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    return area, fill, area / max(hull_area(corners), 1.0)


def radial_profile(region, bins=72):
    """The region's outline as its largest distance from the centroid per direction (5° bins),
    gaps filled by circular interpolation, lightly smoothed."""
    ys, xs = np.nonzero(region)
    padded = np.pad(region, 1)
    interior = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
                & padded[1:-1, 2:])
    by, bx = np.nonzero(region & ~interior)
    dy, dx = by - ys.mean(), bx - xs.mean()
    index = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    profile = np.full(bins, -1.0)
    np.maximum.at(profile, index, np.hypot(dy, dx))
    k = np.arange(bins)
    seen = profile >= 0
    profile = np.interp(k, np.concatenate([k[seen] - bins, k[seen], k[seen] + bins]), np.tile(profile[seen], 3))
    return (np.roll(profile, 1) + profile + np.roll(profile, -1)) / 3


def corner_count(region, prominence=CORNER_PROMINENCE, half_window=7):
    """Directions where the outline reaches out: maxima of the radial profile that stand
    `prominence` times above its minimum within ±half_window bins (±35°). A square has 4 (its
    corners are √2 farther than its sides), a triangle 3, a five-pointed star 5, a circle none;
    blur rounds corners but keeps them."""
    p = radial_profile(region)
    n = len(p)
    peaks = []
    for i in range(n):
        window = p[[(i + j) % n for j in range(-half_window, half_window + 1)]]
        if p[i] >= window.max() and p[i] > prominence * window.min():
            if not peaks or i - peaks[-1] > 2:  # one corner, even on a plateau
                peaks.append(i)
    if len(peaks) > 1 and peaks[0] + n - peaks[-1] <= 2:
        peaks.pop()
    return len(peaks)


def stripe_score(region, distance):
    """How striped a region is: the amplitude of its row profile (the mean distance from the
    background of each row's region pixels) at the stripes' period, relative to the profile's mean.
    Horizontal bands of the colour (distance D) and of its mix with the background (distance
    (1 - STRIPE_MIX) D) make the profile a square wave of mean (1 - STRIPE_MIX/2) D whose
    fundamental has amplitude (4/pi)(STRIPE_MIX/2) D: a score of 0.32 for clean stripes. A flat
    fill's profile is constant but for its blurred top and bottom rows, which are left out."""
    rows = [y for y in range(region.shape[0]) if region[y].sum() >= 3][2:-2]
    if len(rows) < STRIPE_PERIOD:
        return 0.0
    profile = np.array([distance[y][region[y]].mean() for y in rows])
    wave = np.exp(-2j * np.pi * np.asarray(rows) / STRIPE_PERIOD)
    return float(2 * abs(np.dot(profile - profile.mean(), wave)) / len(rows) / profile.mean())


def classify(corners, solidity):
    # A star whose two arms blurred into one still has its deep notches: low solidity.
    if corners >= 5 or (corners == 4 and solidity < STAR_SOLIDITY):
        return "star"
    return {4: "square", 3: "triangle"}.get(corners, "circle")


def judge(image):
    """{"shape", "colour", "background", "corners", "fill", "solidity", "striped", "stripes"} of an RGB
    image (uint8 [H, W, 3] or a path); shape and colour are "none" when no shape stands out from the
    background; "striped" says whether its fill is (stripe_score "stripes" > STRIPES)."""
    if not isinstance(image, np.ndarray):
        image = np.asarray(Image.open(image).convert("RGB"))
    rgb = image.astype(float)
    bg = background(rgb)
    mask = np.linalg.norm(rgb - bg, axis=-1) > FOREGROUND_DISTANCE
    result = {"background": nearest(bg, BACKGROUNDS), "shape": "none", "colour": "none", "corners": 0,
              "fill": 0.0, "solidity": 0.0, "striped": False, "stripes": 0.0}
    if mask.sum() < MIN_AREA:
        return result
    region = largest_component(mask)
    area, fill, solidity = features(region)
    # Not a shape: too small, too large, cut by the border, or not of one colour (noise, smears).
    on_border = region[0].sum() + region[-1].sum() + region[:, 0].sum() + region[:, -1].sum()
    distance_map = np.linalg.norm(rgb - bg, axis=-1)
    stripes = stripe_score(region, distance_map)
    # The colour of the shape's core: the quarter of its pixels farthest from the background (a
    # blurred edge, and a stripe, mix the colour with the background).
    distance = distance_map[region]
    core_pixels = rgb[region][distance >= np.percentile(distance, 75)]
    core = np.median(core_pixels, axis=0)
    # One colour: flat fills over the whole region, striped ones over their core (the colour's bands).
    pixels = core_pixels if stripes > STRIPES else rgb[region]
    spread = np.median(np.linalg.norm(pixels - np.median(pixels, axis=0), axis=-1))
    if area < MIN_AREA or area > MAX_AREA * region.size or on_border > MAX_BORDER or spread > MAX_SPREAD:
        return result
    corners = corner_count(region)
    result.update(shape=classify(corners, solidity), colour=nearest(core, COLOURS), corners=corners,
                  fill=round(fill, 3), solidity=round(solidity, 3), striped=stripes > STRIPES,
                  stripes=round(stripes, 3))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="images with metadata.jsonl (shape, colour columns)")
    args = ap.parse_args()
    rows = [json.loads(l) for l in (args.folder / "metadata.jsonl").read_text().splitlines()]
    right = {"shape": 0, "colour": 0, "both": 0}
    for row in rows:
        verdict = judge(args.folder / row["file_name"])
        ok = {k: verdict[k] == row[k] for k in ("shape", "colour")}
        right["shape"] += ok["shape"]
        right["colour"] += ok["colour"]
        right["both"] += ok["shape"] and ok["colour"]
    n = len(rows)
    print(f"{n} images: shape {right['shape'] / n:.1%}, colour {right['colour'] / n:.1%}, both {right['both'] / n:.1%}")


if __name__ == "__main__":
    main()
