"""One run per output folder (src/train/output_lock.cpp): a second run on the same --out is refused
while the first runs, and a killed run's lock does not outlive it."""

import subprocess
import time

from train_runs import random_images


def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(sdtune_bin, pipeline, tmp_path,
                                                                      one_line_error):
    random_images(tmp_path / "data", 2, seed=0)
    out = tmp_path / "out"

    def args(steps):
        return [str(a) for a in [sdtune_bin, "train", "--model", pipeline("tiny")[0], "--data", tmp_path / "data",
                                 "--out", out, "--resolution", 32, "--center-crop", "--batch-size", 1,
                                 "--max-steps", steps, "--checkpointing-steps", 0, "--quiet"]]

    first = subprocess.Popen(args(100000), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / ".sdtune.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text() == f"{first.pid}\n"):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        for command in ["train", "dreambooth"]:
            second = args(1)
            second[1] = command
            if command == "dreambooth":
                second = [a if a != "--data" else "--instance-data" for a in second] + ["--instance-prompt", "x"]
            one_line_error(subprocess.run(second, capture_output=True, text=True), str(out),
                           f"another sdtune run (pid {first.pid}) is writing to this output folder")
        assert first.poll() is None
    finally:
        first.kill()  # SIGKILL: no chance to release anything itself
        first.wait()
    third = subprocess.run(args(1), capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert (out / "model_index.json").is_file()


def test_a_run_that_fails_early_leaves_no_folder(run_sdtune, pipeline, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_sdtune("train", "--model", pipeline("tiny")[0], "--data", tmp_path / "empty", "--out",
                      tmp_path / "out", "--quiet", check=False)
    assert proc.returncode == 1 and "no usable image" in proc.stderr
    assert not (tmp_path / "out").exists()
