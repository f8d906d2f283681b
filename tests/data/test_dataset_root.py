"""A downloaded dataset reads only its own folder (src/data/dataset_root.cpp): metadata rows that
climb out with "..", absolute paths, symlinks leading elsewhere and caption files doing the same
are skipped with a warning naming them, and counted in the run summary; --allow-outside-data reads
them; a Hugging Face cache snapshot's links into its own blob store are inside."""

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from binaries import built_binary


def image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


@pytest.fixture
def dump(tmp_path):
    """dump(folder, *args) -> (file names read, skipped records, stderr) through sdtune_dataset_dump."""

    def run(folder, *args):
        out = tmp_path / f"dump_{len(list(tmp_path.glob('dump_*')))}.safetensors"
        proc = subprocess.run([str(built_binary("sdtune_dataset_dump")), "--data", str(folder), "--out", str(out),
                               "--resolution", "32", "--center-crop", *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        with safe_open(str(out), "pt") as f:
            meta = f.metadata()
        files = [os.path.basename(meta[f"file.{i}"]) for i in range(int(meta["count"]))]
        return files, json.loads(meta["skipped"]), proc.stderr

    return run


@pytest.fixture
def hostile(tmp_path):
    """A dataset folder whose metadata.jsonl names two good images and, through "..", an absolute
    path and a symlink, a private picture outside it; plus the private picture."""
    private = image(tmp_path / "private" / "me.png", 9)
    data = tmp_path / "data"
    image(data / "a.png", 0)
    image(data / "sub" / "b.png", 1)
    (data / "link.png").symlink_to(private)
    (data / "sub" / "inside.png").symlink_to(data / "a.png")  # a link that stays inside is fine
    rows = [("a.png", "good a"), ("sub/b.png", "good b"), ("../private/me.png", "climbs"),
            (str(private), "absolute"), ("link.png", "symlink"), ("sub/inside.png", "inside link")]
    (data / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f, "text": t}) + "\n" for f, t in rows))
    return data, private


def test_metadata_rows_outside_the_folder_are_skipped(dump, hostile):
    data, private = hostile
    files, skipped, stderr = dump(data)
    assert sorted(files) == ["a.png", "b.png", "inside.png"]
    outside = [s for s in skipped if s["outside"]]
    assert len(outside) == 3 and len(skipped) == 3
    for s, line in zip(outside, ["line 3", "line 4", "line 5"]):
        assert f"listed in metadata.jsonl {line} but outside the dataset folder" in s["reason"]
        assert f"it leads to {private}" in s["reason"] and "--allow-outside-data" in s["reason"]
    assert stderr.count("sdtune: warning: skipping") == 3 and str(data / "link.png") in stderr


def test_allow_outside_data_reads_them(dump, hostile):
    files, skipped, _ = dump(hostile[0], "--allow-outside-data")
    assert sorted(files) == ["a.png", "b.png", "inside.png", "link.png", "me.png"]
    # The absolute row names the file that the ".." row did.
    assert [s["reason"] for s in skipped] == ["listed again in metadata.jsonl line 4"]


def test_symlinked_images_and_caption_files_in_a_sidecar_folder(dump, tmp_path):
    private = image(tmp_path / "private" / "me.png", 9)
    (tmp_path / "private" / "notes.txt").write_text("my bank password")
    data = tmp_path / "data"
    image(data / "a.png", 0)
    (data / "a.txt").write_text("caption a")
    image(data / "b.png", 1)
    (data / "b.txt").symlink_to(tmp_path / "private" / "notes.txt")
    (data / "c.png").symlink_to(private)
    files, skipped, _ = dump(data)
    assert files == ["a.png"]
    reasons = {os.path.basename(s["path"]): s["reason"] for s in skipped}
    assert set(reasons) == {"b.txt", "c.png"} and all(s["outside"] for s in skipped)
    assert reasons["b.txt"].startswith("its caption file is outside the dataset folder")
    assert str(tmp_path / "private" / "notes.txt") in reasons["b.txt"]


def test_a_hub_cache_snapshot_reads_its_blobs(dump, tmp_path):
    # huggingface_hub's layout: snapshots/REV/FILE -> ../../blobs/HASH.
    repo = tmp_path / "hub" / "datasets--someone--shapes"
    image(repo / "blobs" / "1f2e3d", 0)
    image(tmp_path / "elsewhere" / "x.png", 1)
    snapshot = repo / "snapshots" / "0123abc"
    (snapshot / "train").mkdir(parents=True)
    (snapshot / "train" / "0.png").symlink_to("../../../blobs/1f2e3d")
    (snapshot / "train" / "1.png").symlink_to(tmp_path / "elsewhere" / "x.png")
    files, skipped, _ = dump(snapshot / "train")
    assert files == ["0.png"]
    assert len(skipped) == 1 and skipped[0]["outside"] and skipped[0]["path"].endswith("1.png")


def test_train_summary_counts_them_and_a_linked_metadata_file_is_an_error(run_sdtune, pipeline, hostile,
                                                                         tmp_path, one_line_error):
    data, _ = hostile
    model = pipeline("tiny")[0]
    args = ["--model", model, "--resolution", 32, "--center-crop", "--max-steps", 1, "--batch-size", 1, "--quiet"]
    proc = run_sdtune("train", "--data", data, "--out", tmp_path / "out", *args)
    assert "examples: 3 used, 3 skipped (3 outside the dataset folder)" in proc.stdout
    assert proc.stdout.count("outside the dataset folder " + str(data)) == 3

    # The metadata file itself leading out: nothing of the dataset can be trusted.
    elsewhere = tmp_path / "elsewhere.jsonl"
    (data / "metadata.jsonl").rename(elsewhere)
    (data / "metadata.jsonl").symlink_to(elsewhere)
    proc = run_sdtune("train", "--data", data, "--out", tmp_path / "out2", *args, check=False)
    one_line_error(proc, str(data / "metadata.jsonl"), "the dataset's metadata.jsonl is outside the dataset folder")
    assert not (tmp_path / "out2").exists()


def test_class_images_are_confined_too(run_sdtune, pipeline, tmp_path):
    instance, classes = tmp_path / "instance", tmp_path / "class"
    for i in range(2):
        image(instance / f"{i}.png", i)
        image(classes / f"class-{i}.png", 10 + i)
    (classes / "class-9.png").symlink_to(image(tmp_path / "private" / "me.png", 9))
    proc = run_sdtune("dreambooth", "--model", pipeline("tiny")[0], "--instance-data", instance,
                      "--instance-prompt", "a sks shape", "--with-prior-preservation", "--class-prompt", "a shape",
                      "--class-data", classes, "--num-class-images", 2, "--out", tmp_path / "out", "--resolution", 32,
                      "--center-crop", "--max-steps", 1, "--batch-size", 1, "--quiet")
    assert "instance examples: 2, class examples: 2" in proc.stdout
    assert "1 skipped (1 outside the dataset folder)" in proc.stdout and "class-9.png" in proc.stdout


def test_class_images_outside_are_not_counted_as_found(run_sdtune, pipeline, tmp_path):
    """3 class images wanted, 2 in the folder and a link leading out: one is generated, so that
    training gets the 3 it was asked for."""
    instance, classes = tmp_path / "instance", tmp_path / "class"
    for i in range(2):
        image(instance / f"{i}.png", i)
        image(classes / f"mine-{i}.png", 10 + i)
    (classes / "mine-9.png").symlink_to(image(tmp_path / "private" / "me.png", 9))
    proc = run_sdtune("dreambooth", "--model", pipeline("tiny")[0], "--instance-data", instance,
                      "--instance-prompt", "a sks shape", "--with-prior-preservation", "--class-prompt", "a shape",
                      "--class-data", classes, "--num-class-images", 3, "--class-inference-steps", 2,
                      "--out", tmp_path / "out", "--resolution", 32, "--center-crop", "--max-steps", 1,
                      "--batch-size", 1, "--quiet")
    assert (classes / "class-00000.png").is_file()
    assert "instance examples: 2, class examples: 3" in proc.stdout, proc.stdout
