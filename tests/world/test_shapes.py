"""The tiny world's dataset generator: deterministic from a seed, captions that say what is drawn,
every shape inside the image in its exact colour."""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "world"))
import shapes  # noqa: E402


def test_same_seed_same_dataset_other_seed_other(tmp_path):
    a = shapes.write_dataset(tmp_path / "a", 12, seed=5)
    b = shapes.write_dataset(tmp_path / "b", 12, seed=5)
    c = shapes.write_dataset(tmp_path / "c", 12, seed=6)
    assert a == b and a != c
    for row in a:
        assert (tmp_path / "a" / row["file_name"]).read_bytes() == (tmp_path / "b" / row["file_name"]).read_bytes()


def test_captions_and_pixels_agree(tmp_path):
    rows = shapes.write_dataset(tmp_path, 40, seed=1, shapes=shapes.SHAPES)
    meta = [json.loads(l) for l in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert meta == rows
    assert {r["shape"] for r in rows} == set(shapes.SHAPES)
    for r in rows:
        assert r["text"] == f"a {r['colour']} {r['shape']} on a {r['background']} background"
        pixels = np.asarray(Image.open(tmp_path / r["file_name"]))
        assert pixels.shape == (shapes.SIZE, shapes.SIZE, 3)
        colours = {tuple(p) for p in pixels.reshape(-1, 3)}
        # Flat colours only: the background and the shape's, and the border is background.
        assert colours == {shapes.BACKGROUNDS[r["background"]], shapes.COLOURS[r["colour"]]}
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert (border == shapes.BACKGROUNDS[r["background"]]).all()


def test_caption_template_for_a_new_concept(tmp_path):
    rows = shapes.write_dataset(tmp_path, 4, seed=2, shapes=("star",), colours=("red",),
                                template="a {colour} sks shape")
    assert {r["text"] for r in rows} == {"a red sks shape"} and {r["shape"] for r in rows} == {"star"}


def test_held_out_pairs_never_appear_but_their_parts_do(tmp_path):
    rows = shapes.write_dataset(tmp_path, 300, seed=3, exclude=shapes.HELD_OUT)
    pairs = {(r["colour"], r["shape"]) for r in rows}
    assert not pairs & set(shapes.HELD_OUT)
    assert {c for c, _ in pairs} == set(shapes.COLOURS) and {s for _, s in pairs} == set(shapes.BASE_SHAPES)
    assert len(pairs) == len(shapes.COLOURS) * len(shapes.BASE_SHAPES) - len(shapes.HELD_OUT)
