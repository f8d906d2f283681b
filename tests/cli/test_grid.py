"""`sdtune grid`: every cell of the comparison image is exactly the image `sdtune generate` makes
for that model, prompt and seed."""

import numpy as np
from PIL import Image


def find(haystack, needle):
    """Top-left positions where `needle` occurs exactly in `haystack` (both HxWx3 uint8)."""
    h, w = needle.shape[:2]
    ys, xs = np.nonzero((haystack[: haystack.shape[0] - h + 1, : haystack.shape[1] - w + 1] == needle[0, 0]).all(-1))
    return [(y, x) for y, x in zip(ys, xs) if np.array_equal(haystack[y : y + h, x : x + w], needle)]


def test_grid_cells_are_the_generated_images(pipeline, run_sdtune, tmp_path):
    tiny, _ = pipeline("tiny")
    prompts, seeds = ["Bill Gates", "Bill Gates ninja portrait"], [1, 2]
    run_sdtune("grid", "--model", tiny, *sum((["--prompt", p] for p in prompts), []),
               *sum((["--seed", s] for s in seeds), []), "--steps", 3, "--out", tmp_path / "grid.png", "--quiet")
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    positions = {}
    for r, prompt in enumerate(prompts):
        for c, seed in enumerate(seeds):
            out = tmp_path / f"cell-{r}-{c}.png"
            run_sdtune("generate", "--model", tiny, "--prompt", prompt, "--seed", seed, "--steps", 3, "--out", out,
                       "--quiet")
            found = find(grid, np.asarray(Image.open(out).convert("RGB")))
            assert found, f"cell {prompt!r} seed {seed} not in the grid"
            positions[r, c] = found[0]
    # Rows go down, seeds go right.
    assert positions[0, 0][0] < positions[1, 0][0] and positions[0, 0][1] == positions[1, 0][1]
    assert positions[0, 0][1] < positions[0, 1][1] and positions[0, 0][0] == positions[0, 1][0]
    # Labels: there is dark text to the left of the first column.
    assert (grid[:, : positions[0, 0][1]] < 100).any()
    assert "Bill Gates ninja portrait" in Image.open(tmp_path / "grid.png").info["parameters"]
