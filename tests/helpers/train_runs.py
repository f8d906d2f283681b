"""What the training tests share: folders of random images and a run's logged metrics."""

import json
from pathlib import Path

import numpy as np
from PIL import Image


def random_images(folder, n, seed, size=32):
    """n random size×size RGB images saved as folder/0.png ...; returns their pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        images.append(pixels)
    return images


def metrics(out):
    """The records of OUT/logs/metrics.jsonl, one dict per logged step."""
    return [json.loads(line) for line in (Path(out) / "logs" / "metrics.jsonl").read_text().splitlines()]
