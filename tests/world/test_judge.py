"""The tiny world's judge names shape and colour of the generator's own images (all of them), of
blurred and noisy copies (most of them: generated images are never crisp), and says "none" when
nothing stands out from the background."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "world"))
import shapes  # noqa: E402
from judge import judge  # noqa: E402


@pytest.fixture(scope="module", params=shapes.FILLS)
def dataset(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"shapes-{request.param}")
    return folder, shapes.write_dataset(folder, 160, seed=11, shapes=shapes.SHAPES, fills=(request.param,))


def accuracy(folder, rows, degrade=lambda im: im):
    """(shape and colour right, fill right): fractions of rows."""
    right = fill = 0
    for r in rows:
        verdict = judge(np.asarray(degrade(Image.open(folder / r["file_name"]))))
        right += verdict["shape"] == r["shape"] and verdict["colour"] == r["colour"]
        fill += verdict["striped"] == (r["fill"] == "striped")
    return right / len(rows), fill / len(rows)


def test_judge_reads_the_generators_images(dataset):
    folder, rows = dataset
    acc, fill = accuracy(folder, rows)
    print(f"judge accuracy on 160 generated {rows[0]['fill']} scenes: {acc:.1%}, fill {fill:.1%}")
    assert acc == 1.0 and fill == 1.0


# Blur weakens stripes as a Gaussian does a wave of period P: by exp(-2 pi^2 sigma^2 / P^2), half
# at sigma 1.5 and a seventh at 2.5, where they are gone for any judge; flat fills stay flat.
# fill_floors: per fill, the fraction whose fill must be named right (None: not checked).
@pytest.mark.parametrize("sigma,floor,fill_floors", [(1.5, 0.98, {"flat": 0.9, "striped": 0.9}),
                                                      (2.5, 0.9, {"flat": 0.95, "striped": None})])
def test_judge_tolerates_blur_and_noise(dataset, sigma, floor, fill_floors):
    folder, rows = dataset
    rng = np.random.default_rng(0)

    def degrade(im):
        a = np.asarray(im.filter(ImageFilter.GaussianBlur(sigma))).astype(float) + rng.normal(0, 12, (64, 64, 3))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

    acc, fill = accuracy(folder, rows, degrade)
    print(f"judge accuracy on blurred (σ {sigma}) noisy {rows[0]['fill']} copies: {acc:.1%}, fill {fill:.1%}")
    assert acc >= floor
    fill_floor = fill_floors[rows[0]["fill"]]
    if fill_floor is not None:
        assert fill >= fill_floor


def test_judge_sees_no_shape_on_a_plain_background():
    for name, rgb in shapes.BACKGROUNDS.items():
        plain = np.full((64, 64, 3), rgb, np.uint8)
        assert judge(plain)["shape"] == "none" and judge(plain)["background"] == name
    # Noise is not a shape, faint or strong (an untrained model's output), nor is a region cut by
    # the border.
    rng = np.random.default_rng(1)
    for sigma in (10, 80):
        noisy = np.clip(rng.normal(128, sigma, (64, 64, 3)), 0, 255).astype(np.uint8)
        assert judge(noisy)["shape"] == "none", sigma
    cut = shapes.render("square", "red", "white", 4, 32, 12)
    assert judge(cut)["shape"] == "none"


def test_each_feature_lands_where_the_geometry_says():
    """Centred, mid-sized shapes: corners 4 / 3 / 5 / 0, and fill and solidity as computed."""
    f = {s: judge(shapes.render(s, "red", "white", 32, 32, 16)) for s in shapes.SHAPES}
    assert {s: f[s]["corners"] for s in shapes.SHAPES} == {"circle": 0, "square": 4, "triangle": 3, "star": 5}
    assert f["square"]["fill"] > 0.95 and abs(f["circle"]["fill"] - np.pi / 4) < 0.05
    assert abs(f["triangle"]["fill"] - 0.5) < 0.06 and f["star"]["solidity"] < 0.65
    assert all(f[s]["solidity"] > 0.9 for s in shapes.BASE_SHAPES)


def test_a_small_blurred_star_is_still_a_star():
    """What a tiny model draws: small and soft. Its solidity rises toward a convex shape's, its five
    corners stay."""
    for r in (9, 12):
        star = Image.fromarray(shapes.render("star", "red", "white", 32, 32, r)).filter(ImageFilter.GaussianBlur(2))
        verdict = judge(np.asarray(star))
        assert verdict["shape"] == "star", verdict


def test_stripe_score_is_the_square_waves_fundamental():
    """A large striped square: its row profile is a square wave between D and (1 - mix) D, whose
    fundamental relative to the mean is (4/pi)(mix/2) / (1 - mix/2); a flat square scores ~0."""
    mix = shapes.STRIPE_MIX
    expected = (4 / np.pi) * (mix / 2) / (1 - mix / 2)
    for colour, background in (("red", "white"), ("green", "black"), ("yellow", "white")):
        striped = judge(shapes.render("square", colour, background, 32, 32, 20, fill="striped"))
        flat = judge(shapes.render("square", colour, background, 32, 32, 20))
        assert striped["striped"] and abs(striped["stripes"] - expected) < 0.03, (colour, striped)
        assert not flat["striped"] and flat["stripes"] < 0.01
        assert striped["shape"] == flat["shape"] == "square" and striped["colour"] == colour
