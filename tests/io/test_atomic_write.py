"""Saves that fail (src/io/atomic_write.cpp): a checkpoint that hits the file-size limit or a full
disk is a one-line error naming the errno, the previous checkpoint and final model stay byte for
byte, and no temporary is left; the next run removes what a killed one left."""

import hashlib
import re
import resource
import shutil
import subprocess

import pytest

from train_runs import random_images

TEMPORARY = re.compile(r".*\.(tmp\.|tmp-|old-)\d+")  # io::is_temporary_name


def digests(folder, skip=("logs", ".sdtune.lock")):
    """SHA-256 of every file under `folder` but the logs (appended to) and the lock (holds a pid)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] not in skip}


def temporaries(folder):
    return [p for p in folder.rglob("*") if TEMPORARY.fullmatch(p.name)]


def train_args(sdtune_bin, model, data, out, *extra):
    return [str(a) for a in [sdtune_bin, "train", "--model", model, "--data", data, "--out", out, "--resolution", 32,
                             "--center-crop", "--batch-size", 1, "--checkpointing-steps", 2, *extra]]


def test_a_save_past_the_file_size_limit_keeps_what_was_saved(sdtune_bin, pipeline, tmp_path, one_line_error):
    random_images(tmp_path / "data", 2, seed=0)
    out, model = tmp_path / "out", pipeline("tiny")[0]
    first = subprocess.run(train_args(sdtune_bin, model, tmp_path / "data", out, "--max-steps", 2, "--quiet"),
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = digests(out)
    assert "checkpoint-2/unet/diffusion_pytorch_model.safetensors" in before and "model_index.json" in before

    # The UNet's weights no longer fit: the resumed run's checkpoint-4 cannot be written.
    limit = (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size // 2
    proc = subprocess.run(train_args(sdtune_bin, model, tmp_path / "data", out, "--max-steps", 4,
                                     "--resume-from-checkpoint", "latest", "--quiet"),
                          capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    one_line_error(proc, "checkpoint-4", "File too large")
    assert digests(out) == before
    assert temporaries(out) == [] and not (out / "checkpoint-4").exists()


def test_the_next_run_removes_what_a_killed_run_left(sdtune_bin, pipeline, tmp_path):
    random_images(tmp_path / "data", 2, seed=0)
    out = tmp_path / "out"
    # What a run killed while saving leaves: a checkpoint folder, a file and the final model's staging.
    left = [out / "checkpoint-6.tmp-4242", out / "logs" / "step-6.png.tmp.4242", out / ".final-model.tmp-4242"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.startswith(".png"):
            path.write_bytes(b"half a png")
        else:
            (path / "unet").mkdir(parents=True)
            (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 100)
    proc = subprocess.run(train_args(sdtune_bin, pipeline("tiny")[0], tmp_path / "data", out, "--max-steps", 2),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for path in left:
        assert f"removed {path}, left by an interrupted run" in proc.stderr
        assert not path.exists()
    assert temporaries(out) == [] and (out / "checkpoint-2").is_dir()


def test_a_full_disk_keeps_what_was_saved(sdtune_bin, pipeline, tmp_path, one_line_error):
    # A real ENOSPC: the run's folder on a tmpfs with room for half a checkpoint more. Mounting
    # needs privileges that not every machine gives; the file-size limit above fails the same way.
    disk = tmp_path / "disk"
    disk.mkdir()
    random_images(tmp_path / "data", 2, seed=0)
    model = pipeline("tiny")[0]
    first = subprocess.run(train_args(sdtune_bin, model, tmp_path / "data", tmp_path / "out", "--max-steps", 2,
                                      "--quiet"), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    used = sum(p.stat().st_size for p in (tmp_path / "out").rglob("*") if p.is_file())
    checkpoint = sum(p.stat().st_size for p in (tmp_path / "out" / "checkpoint-2").rglob("*") if p.is_file())
    size_kib = (used + checkpoint // 2) // 1024 + 256
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "out"
        shutil.copytree(tmp_path / "out", out, symlinks=True)
        before = digests(out)
        proc = subprocess.run(train_args(sdtune_bin, model, tmp_path / "data", out, "--max-steps", 4,
                                         "--resume-from-checkpoint", "latest", "--quiet"),
                              capture_output=True, text=True)
        one_line_error(proc, "No space left on device")
        assert digests(out) == before
        assert temporaries(out) == [] and not (out / "checkpoint-4").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)
