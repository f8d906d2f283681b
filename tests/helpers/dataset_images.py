"""Writes image folders for the data-layer tests (tests/data/): good images in every format
training meets, and the bad files it must skip. Not named test_*.py so pytest does not collect it."""

import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def gradient(width, height):
    """A smooth RGB image (no edges), so that resize filters agree closely."""
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    r = 40 + 170 * x + 0 * y
    g = 30 + 180 * y + 0 * x
    b = 128 + 60 * np.sin(2 * np.pi * (x + y) / 2)
    return Image.fromarray(np.stack([r, g, b], -1).round().astype(np.uint8), "RGB")


def halves(width, height, left=RED, right=BLUE):
    """Left half `left`, right half `right`."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = left
    a[:, width // 2 :] = right
    return Image.fromarray(a, "RGB")


def write_exif_rotated(path, display):
    """Saves `display` stored rotated with EXIF orientation 6 (rotate 90° clockwise to view), so a
    reader that honours the tag shows `display` again."""
    stored = display.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif.tobytes())


def write_corrupt_jpeg(path, seed=0):
    """A JPEG's SOI + JFIF header, then random bytes: no decodable frame."""
    buf = io.BytesIO()
    gradient(32, 32).save(buf, "JPEG")
    header = buf.getvalue()[:20]
    rng = random.Random(seed)
    path.write_bytes(header + bytes(rng.randrange(256) for _ in range(2000)))


def write_truncated_png(path, seed=0):
    """A valid, noisy (so large) PNG cut in half."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])


def make_dataset(folder, resolution=64):
    """The full set of cases, captions in metadata.jsonl. Returns {file_name: caption} of the rows
    (including the corrupt, truncated and missing ones)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    r = resolution
    gradient(2 * r, 3 * r // 2).save(folder / "rgb.jpg", quality=95)
    gradient(3 * r // 2 + 7, 2 * r + 5).save(folder / "rgb.png")
    write_corrupt_jpeg(folder / "corrupt.jpg")
    write_truncated_png(folder / "truncated.png")
    # Pure red in CMYK (PIL writes Adobe-inverted CMYK JPEGs, which readers undo).
    Image.new("CMYK", (r + 10, r + 10), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)
    ramp16 = (np.linspace(0, 65535, r + 16)[None, :].repeat(r + 16, 0)).astype(np.uint16)
    deep = Image.frombytes("I;16", (r + 16, r + 16), ramp16.astype("<u2").tobytes())
    deep.save(folder / "deep.png")
    grey = (np.linspace(0, 255, r + 8)[None, :].repeat(r + 8, 0)).astype(np.uint8)
    Image.fromarray(grey, "L").save(folder / "grey.png")
    rgba = np.zeros((r + 20, r + 20, 4), np.uint8)  # transparent black ...
    c = (r + 20) // 2
    rgba[c - 8 : c + 8, c - 8 : c + 8] = (0, 0, 255, 255)  # ... with an opaque blue centre
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    write_exif_rotated(folder / "exif.jpg", halves(2 * r, 3 * r // 2))
    gradient(r // 3, r // 2).save(folder / "small.png")
    rows = {
        "rgb.jpg": "a smooth gradient",
        "rgb.png": "another gradient",
        "corrupt.jpg": "never read",
        "truncated.png": "half a file",
        "cmyk.jpg": "red in cmyk",
        "deep.png": "sixteen bits",
        "grey.png": "grey ramp",
        "alpha.png": "blue square on transparency",
        "exif.jpg": "red left, blue right",
        "small.png": "",
        "missing.jpg": "not there",
    }
    with open(folder / "metadata.jsonl", "w") as f:
        for name, caption in rows.items():
            f.write(json.dumps({"file_name": name, "text": caption}) + "\n")
    return rows
