"""Crash safety by trial: `sdtune train` killed with SIGKILL at any instant, checkpoint writes
included, must lose nothing.

One uninterrupted reference run (the shipped tiny base model world/base, a full fine-tune with EMA
and the text encoder on random images, 16 steps, a checkpoint every 2 of which the last 3 stay; one
CPU thread), then --trials trials, each into a fresh folder: the same run killed at a seeded random
target (every other trial at a time uniform over the reference run's duration; the rest while a
checkpoint is written, while an old one is pruned, or while the final model is written), then
resumed with --resume-from-checkpoint latest. After the kill every checkpoint-STEP/ must be
complete, load and equal the reference's, and none half-written may be taken for complete; the
resume must start from the newest complete checkpoint and exit 0; then OUT must hold nothing the
reference's does not (temporaries, half-removed folders), and the final model, the checkpoints and
the logged losses must equal the reference's bit for bit (tensors compared byte for byte per key;
safetensors files that differ only as whole files are named). One line per trial, a summary, and a
non-zero exit if any trial fails. Logic: tests/helpers/kill_resume.py.

    nice -n 10 python3 bench/kill_trials.py [--trials 50] [--seed 0] [--sdtune build/sdtune] [--keep]
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))

from kill_resume import Run, make_data, plan, reference_run, run_trial, summary  # noqa: E402


def snapshot(binary, folder):
    """A copy of the binary under test, so that a rebuild during the trials cannot mix two builds
    (it finds its libraries by absolute RUNPATH). Waits out a relink that removed it for a moment."""
    for _ in range(60):
        if binary.exists():
            return Path(shutil.copy2(binary, folder / "sdtune"))
        time.sleep(1)
    sys.exit(f"{binary} not found")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill instants and targets")
    parser.add_argument("--sdtune", type=Path, default=Path(os.environ.get("SDTUNE_BIN", REPO / "build" / "sdtune")))
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="kill_trials."))
    started = time.monotonic()
    try:
        run = Run(sdtune=snapshot(args.sdtune, scratch), data=make_data(scratch / "data"))
        ref = reference_run(run, scratch / "reference", scratch / "reference.log")
        print(f"reference: {ref.seconds:.1f} s, checkpoint writes up to {ref.checkpoint_seconds:.2f} s, "
              f"final model {ref.final_seconds:.2f} s", flush=True)
        rng = random.Random(args.seed)
        trials = []
        for i, target in enumerate(plan(args.trials)):
            trial = run_trial(i, target, run, ref, scratch / f"trial-{i}", rng, scratch / f"trial-{i}.log")
            trials.append(trial)
            print(trial.line(), flush=True)
            if not args.keep:  # a trial's folder is up to 200 MB; its problems are printed
                shutil.rmtree(scratch / f"trial-{i}")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    during = Counter(t.phase for t in trials if t.killed)
    print("kills during: " + ", ".join(f"{phase} {n}" for phase, n in during.most_common()))
    failed = [t.index for t in trials if not t.ok]
    print(f"failed trials: {failed}" if failed else "every trial passed")
    print(f"wall time {time.monotonic() - started:.0f} s" + (f"; scratch kept in {scratch}" if args.keep else ""))
    print(summary(trials))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
