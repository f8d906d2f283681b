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


def test_striped_fill_alternates_the_colour_and_its_mix_with_the_background(tmp_path):
    rows = shapes.write_dataset(tmp_path, 24, seed=4, shapes=shapes.SHAPES, fills=("striped",))
    period = shapes.STRIPE_PERIOD
    for r in rows:
        assert r["fill"] == "striped" and r["text"] == f"a {r['colour']} {r['shape']} on a {r['background']} background"
        pixels = np.asarray(Image.open(tmp_path / r["file_name"])).astype(int)
        colour, background = np.array(shapes.COLOURS[r["colour"]]), np.array(shapes.BACKGROUNDS[r["background"]])
        mixed = np.round((1 - shapes.STRIPE_MIX) * colour + shapes.STRIPE_MIX * background)
        for y in range(shapes.SIZE):
            inside = (pixels[y] != background).any(-1)
            # Rows 0..period/2-1 of each period are the colour, the next period/2 rows the mix.
            expected = colour if (y // (period // 2)) % 2 == 0 else mixed
            assert (pixels[y][inside] == expected).all(), (r, y)
        assert (pixels != background).any(-1).sum() > 0


def test_fills_draw_per_image_and_a_flat_dataset_is_what_it_was(tmp_path):
    both = shapes.write_dataset(tmp_path / "both", 60, seed=7, fills=shapes.FILLS)
    assert {r["fill"] for r in both} == set(shapes.FILLS)
    # One fill draws nothing from the generator: the scenes equal those of a dataset without fills.
    flat = shapes.write_dataset(tmp_path / "flat", 60, seed=7)
    striped = shapes.write_dataset(tmp_path / "striped", 60, seed=7, fills=("striped",))
    strip = [{k: v for k, v in r.items() if k != "fill"} for r in flat]
    assert strip == [{k: v for k, v in r.items() if k != "fill"} for r in striped]
    assert all(r["fill"] == "flat" for r in flat)
