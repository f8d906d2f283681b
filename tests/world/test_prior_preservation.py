"""DreamBooth's prior preservation, measured on the shipped base model (world/base): after teaching it
red stars as "a red sks shape", the class prompt "a red shape" must change less with prior
preservation on than with it off. "Change" is counted by the judge on the same seeds: the fraction
of the class prompt's images whose judged shape differs from the base model's, and the fraction
that became the new concept (stars).

Without prior preservation the class drifts to the new concept; with it, the class images the base
model generated keep the class as it was (the base model draws "a red shape" as a red circle)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "world"))
import shapes  # noqa: E402
from judge import judge  # noqa: E402

BASE = Path(__file__).resolve().parents[2] / "world" / "base"
INSTANCE = "a red sks shape on a white background"
CLASS = "a red shape on a white background"
SEEDS = (1, 2)
PER_SEED = 8


def shapes_drawn(run_sdtune, model, prompt, folder):
    """The judged shape of each of len(SEEDS) * PER_SEED images of `prompt`, in a fixed order."""
    folder.mkdir(parents=True)
    verdicts = []
    for seed in SEEDS:
        out = folder / f"s{seed}.png"
        run_sdtune("generate", "--model", model, "--prompt", prompt, "--seed", seed, "--steps", 20,
                   "--num-images", PER_SEED, "--out", out, "--quiet")
        verdicts += [judge(folder / f"s{seed}-{i}.png")["shape"] for i in range(PER_SEED)]
    return verdicts


@pytest.mark.slow
def test_prior_preservation_keeps_the_class_prompt_from_drifting(run_sdtune, tmp_path):
    stars = tmp_path / "stars"
    shapes.write_dataset(stars, 8, seed=1, shapes=("star",), colours=("red",), backgrounds=("white",),
                         template="a {colour} sks shape on a {background} background")
    before = shapes_drawn(run_sdtune, BASE, CLASS, tmp_path / "base-class")

    changed, class_stars, instance_stars = {}, {}, {}
    for prior in (False, True):
        out = tmp_path / ("prior" if prior else "plain")
        extra = ["--with-prior-preservation", "--class-prompt", CLASS, "--class-data", tmp_path / "class-images",
                 "--num-class-images", 16, "--class-inference-steps", 20] if prior else []
        # The same seed, steps and learning rate: the runs differ only in the prior loss.
        run_sdtune("dreambooth", "--model", BASE, "--instance-data", stars, "--instance-prompt", INSTANCE,
                   "--resolution", shapes.SIZE, "--center-crop", "--batch-size", 4, "--max-steps", 300,
                   "--learning-rate", 4e-4, "--lr-warmup-steps", 0, "--train-text-encoder",
                   "--checkpointing-steps", 0, "--seed", 0, "--out", out, "--quiet", *extra)
        after = shapes_drawn(run_sdtune, out, CLASS, out / "class")
        changed[prior] = sum(a != b for a, b in zip(before, after)) / len(before)
        class_stars[prior] = after.count("star") / len(after)
        instance_stars[prior] = shapes_drawn(run_sdtune, out, INSTANCE, out / "sks").count("star") / len(before)
    print(f"class prompt: base model {dict((s, before.count(s)) for s in set(before))}; images whose judged shape "
          f"changed: prior off {changed[False]:.0%}, on {changed[True]:.0%}; judged stars: off {class_stars[False]:.0%}, "
          f"on {class_stars[True]:.0%}; instance prompt judged stars: off {instance_stars[False]:.0%}, "
          f"on {instance_stars[True]:.0%}")

    # Both runs learned the instance, so the comparison is between two trained models.
    assert instance_stars[False] >= 0.5 and instance_stars[True] >= 0.5
    # The class prompt's images change less with prior preservation than without ...
    assert changed[True] < changed[False]
    # ... and without it the class drifts to the new concept, with it much less.
    assert class_stars[False] >= 0.25 and class_stars[True] <= class_stars[False] - 0.25
