"""The shipped base model (world/base, trained from scratch by world/build_base.sh) draws what
simple prompts ask for: the judge recognises shape and colour in at least half of its images, so a
broken model or a broken generation pipeline fails here."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "world"))
import shapes  # noqa: E402
from judge import judge  # noqa: E402

BASE = Path(__file__).resolve().parents[2] / "world" / "base"


def test_base_model_draws_the_prompted_shape_and_colour(run_sdtune, tmp_path):
    results = []
    for shape in shapes.BASE_SHAPES:
        for colour in shapes.COLOURS:
            out = tmp_path / f"{colour}-{shape}.png"
            run_sdtune("generate", "--model", BASE, "--prompt", shapes.caption(shape, colour, "white"),
                       "--seed", 1, "--steps", 20, "--width", shapes.SIZE, "--height", shapes.SIZE,
                       "--num-images", 2, "--out", out, "--quiet")
            for i in range(2):
                verdict = judge(out.with_name(f"{out.stem}-{i}.png"))
                results.append(verdict["shape"] == shape and verdict["colour"] == colour)
    accuracy = sum(results) / len(results)
    print(f"base model: judge agrees with the prompt on {sum(results)}/{len(results)} images ({accuracy:.0%})")
    assert accuracy >= 0.5
