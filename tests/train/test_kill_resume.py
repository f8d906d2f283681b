"""Crash safety: `sdtune train` killed with SIGKILL while it writes a checkpoint, prunes an old one,
writes the final model, or at a random time, then resumed with --resume-from-checkpoint latest,
loses nothing (tests/helpers/kill_resume.py says what is checked; bench/kill_trials.py runs the same
trials by the fifty)."""

import random

import pytest
from kill_resume import Run, make_data, reference_run, run_trial


@pytest.fixture(scope="module")
def reference(sdtune_bin, tmp_path_factory):
    """A short run (4 steps, a checkpoint every step, the last 2 kept) and its uninterrupted result."""
    root = tmp_path_factory.mktemp("kill_reference")
    run = Run(sdtune=sdtune_bin, data=make_data(root / "data"), steps=4, every=1, keep=2)
    return run, reference_run(run, root / "out", root / "out.log")


@pytest.mark.parametrize("target", ["checkpoint", "prune", "final", "uniform"])
def test_killed_run_resumes_to_the_same_model(reference, target, tmp_path):
    run, ref = reference
    trial = run_trial(0, target, run, ref, tmp_path / "out", random.Random(target), tmp_path / "run.log")
    # A kill at a random time may come after a faster run's end; the targeted ones must land.
    assert trial.killed or target == "uniform", trial.line()
    # The resume said it took the newest complete checkpoint (or started anew), ran the remaining
    # steps and exited 0; the kill left no checkpoint-STEP/ incomplete, and after the resume OUT
    # holds nothing the uninterrupted run's does not (temporaries); the final model, the checkpoints
    # and the logged losses equal that run's bit for bit.
    assert trial.resumed, trial.line()
    assert trial.bitwise, trial.line()
    assert not trial.problems, trial.line()
