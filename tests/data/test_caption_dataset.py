"""The training data layer (src/data/) through tests/data/dataset_dump.cpp: image folders with
metadata.jsonl or sidecar captions, bad files skipped, and diffusers' train_text_to_image
preprocessing (resize of the shorter side, center crop, random flip) checked against PIL and
torchvision."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import dataset_images
from binaries import built_binary

REPO = Path(__file__).resolve().parents[2]
R = 64


@pytest.fixture(scope="session")
def dump_bin():
    return built_binary("sdtune_dataset_dump")


@pytest.fixture
def dump(dump_bin, tmp_path):
    """dump(folder, *args, check=True) -> (images: list, captions: list, files: list of names,
    skipped: list of {"path", "reason"}, stderr)."""

    def run(folder, *args, check=True):
        out = tmp_path / f"dump_{len(list(tmp_path.glob('dump_*')))}.safetensors"
        proc = subprocess.run(
            [str(dump_bin), "--data", str(folder), "--out", str(out), *map(str, args)],
            capture_output=True,
            text=True,
        )
        if not check:
            return proc
        assert proc.returncode == 0, proc.stderr
        with safe_open(str(out), "pt") as f:
            meta = f.metadata()
            n = int(meta["count"])
            images = [f.get_tensor(f"image.{i}") for i in range(n)]
        captions = [meta[f"caption.{i}"] for i in range(n)]
        files = [Path(meta[f"file.{i}"]).name for i in range(n)]
        return images, captions, files, json.loads(meta["skipped"]), proc.stderr

    return run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dataset")
    return folder, dataset_images.make_dataset(folder, R)


def to_uint8(x):
    """float [3,H,W] in [-1,1] -> float [H,W,3] in 0..255."""
    return ((x + 1) * 127.5).permute(1, 2, 0).numpy()


def by_name(result):
    images, captions, files, _, _ = result
    return {f: (img, cap) for f, img, cap in zip(files, images, captions)}


def test_bad_files_are_skipped_and_named(dump, dataset):
    folder, rows = dataset
    images, captions, files, skipped, stderr = dump(folder, "--resolution", R, "--center-crop")
    skipped_names = sorted(Path(s["path"]).name for s in skipped)
    assert skipped_names == ["corrupt.jpg", "missing.jpg", "truncated.png"]
    for name in skipped_names:
        assert f"sdtune: warning: skipping {folder / name}:" in stderr
    # Each reason is about its own file (libvips' error buffer does not leak into the next one).
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert "metadata.jsonl line 11" in reasons["missing.jpg"]
    assert "png" in reasons["truncated.png"].lower() and "jpeg" not in reasons["truncated.png"].lower()
    assert sum("sdtune: warning: skipping" in line for line in stderr.splitlines()) == 3
    assert files == sorted(set(rows) - set(skipped_names))  # sorted by path
    assert captions == [rows[f] for f in files]
    for img in images:
        assert img.shape == (3, R, R) and img.dtype == torch.float32
        assert -1 <= img.min() and img.max() <= 1


def test_formats_become_plausible_rgb(dump, dataset):
    folder, _ = dataset
    got = by_name(dump(folder, "--resolution", R, "--center-crop"))
    cmyk = to_uint8(got["cmyk.jpg"][0]).reshape(-1, 3).mean(0)
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60, cmyk  # red
    for name in ("grey.png", "deep.png"):
        a = to_uint8(got[name][0])
        assert np.abs(a[..., 0] - a[..., 1]).max() < 1e-3 and np.abs(a[..., 1] - a[..., 2]).max() < 1e-3
        # a left-to-right ramp: dark on the left, light on the right
        assert a[:, :4].mean() < 60 and a[:, -4:].mean() > 190, name
    alpha = to_uint8(got["alpha.png"][0])
    assert alpha[:4, :4].min() > 250  # transparent corner flattened onto white
    centre = alpha[R // 2 - 3 : R // 2 + 3, R // 2 - 3 : R // 2 + 3].reshape(-1, 3).mean(0)
    assert centre[2] > 200 and centre[0] < 40, centre


def test_exif_orientation_is_applied(dump, dataset):
    folder, _ = dataset
    a = to_uint8(by_name(dump(folder, "--resolution", R, "--center-crop"))["exif.jpg"][0])
    left, right = a[:, : R // 4].reshape(-1, 3).mean(0), a[:, -R // 4 :].reshape(-1, 3).mean(0)
    assert left[0] > 200 and left[2] < 50, left  # red on the left, where orientation 6 puts it
    assert right[2] > 200 and right[0] < 50, right


def test_small_image_is_upscaled_and_empty_caption_kept(dump, dataset):
    folder, _ = dataset
    img, caption = by_name(dump(folder, "--resolution", R, "--center-crop"))["small.png"]
    assert img.shape == (3, R, R)
    assert caption == ""


def reference_center_crop(path, resample, size):
    """diffusers: Resize(size) of the shorter side + CenterCrop(size), with PIL."""
    from torchvision import transforms

    t = transforms.Compose([transforms.Resize(size, interpolation=resample), transforms.CenterCrop(size)])
    return np.asarray(t(Image.open(path).convert("RGB")), np.float64)


def test_center_crop_matches_torchvision(dump, dataset):
    from torchvision.transforms import InterpolationMode

    folder, _ = dataset
    got = to_uint8(by_name(dump(folder, "--resolution", R, "--center-crop"))["rgb.png"][0])
    lanczos = reference_center_crop(folder / "rgb.png", InterpolationMode.LANCZOS, R)
    bilinear = reference_center_crop(folder / "rgb.png", InterpolationMode.BILINEAR, R)
    assert np.abs(got - lanczos).mean() < 0.5, np.abs(got - lanczos).mean()
    assert np.abs(got - lanczos).max() < 3.0
    assert np.abs(got - bilinear).mean() < 3.0, np.abs(got - bilinear).mean()


def test_random_flip_is_seeded_and_fair(dump, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    dataset_images.halves(R, R).save(folder / "h.png")
    args = ("--resolution", R, "--center-crop", "--random-flip", "--repeat", 200)
    a = dump(folder, *args, "--seed", 3)[0][0]
    b = dump(folder, *args, "--seed", 3)[0][0]
    c = dump(folder, *args, "--seed", 4)[0][0]
    assert torch.equal(a, b)
    flipped = a[:, 0, 0, 0] < 0.9  # red channel high at the left edge: not flipped
    assert 0.35 < flipped.float().mean() < 0.65, flipped.float().mean()
    original = a[~flipped][0]
    for x in a[flipped]:
        assert torch.equal(x, original.flip(-1))
    assert not torch.equal(a, c)


def test_random_crop_stays_inside_and_is_seeded(dump, tmp_path):
    folder = tmp_path / "wide"
    folder.mkdir()
    dataset_images.gradient(3 * R, R).save(folder / "w.png")
    a = dump(folder, "--resolution", R, "--repeat", 50, "--seed", 1)[0][0]
    b = dump(folder, "--resolution", R, "--repeat", 50, "--seed", 1)[0][0]
    assert torch.equal(a, b)
    assert a.shape == (50, 3, R, R)
    # The red channel rises left to right: different crops start at different levels.
    assert len(set(a[:, 0, R // 2, 0].tolist())) > 10


def test_sidecar_captions(dump, tmp_path):
    folder = tmp_path / "sidecar"
    (folder / "sub").mkdir(parents=True)
    dataset_images.gradient(R, R).save(folder / "a.png")
    (folder / "a.txt").write_text("a photo of sks dog\n")
    dataset_images.gradient(R, R).save(folder / "B.JPG")
    dataset_images.gradient(R, R).save(folder / "sub" / "c.webp")
    (folder / "sub" / "c.txt").write_text("nested")
    (folder / "notes.md").write_text("not an image")
    _, captions, files, skipped, _ = dump(folder, "--resolution", R, "--center-crop")
    assert files == ["B.JPG", "a.png", "c.webp"]
    assert captions == ["", "a photo of sks dog", "nested"]
    assert skipped == []


def test_no_captions_at_all(dump, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    dataset_images.gradient(R, R).save(folder / "x.bmp")
    dataset_images.gradient(R, R).save(folder / "y.tiff")
    _, captions, files, _, _ = dump(folder, "--resolution", R, "--center-crop")
    assert files == ["x.bmp", "y.tiff"] and captions == ["", ""]


def test_custom_caption_column(dump, tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    dataset_images.gradient(R, R).save(folder / "a.png")
    dataset_images.gradient(R, R).save(folder / "b.png")
    with open(folder / "metadata.jsonl", "w") as f:
        f.write(json.dumps({"file_name": "b.png", "caption": "bee", "text": "wrong"}) + "\n")
        f.write(json.dumps({"file_name": "a.png", "caption": ["ay", "other"]}) + "\n")
    _, captions, files, _, _ = dump(folder, "--resolution", R, "--caption-column", "caption")
    assert files == ["a.png", "b.png"] and captions == ["ay", "bee"]
    proc = dump(folder, "--resolution", R, check=False)  # default "text": row 2 lacks it
    assert proc.returncode != 0
    assert "metadata.jsonl" in proc.stderr and "line 2" in proc.stderr and "'text'" in proc.stderr


# A number beyond double's range ended the program with an uncaught exception (found by
# fuzz/metadata_jsonl_fuzz.cpp); nesting deeper than 128 levels is refused as in every JSON file
# sdtune reads (io::kMaxJsonDepth).
@pytest.mark.parametrize("row", ['{"file_name": oops}', '{"file_name": "a.png", "text": "x", "n": 1e99999}',
                                 '{"file_name": "a.png", "text": ' + "[" * 5000 + "]" * 5000 + "}"])
def test_invalid_json_line_names_file_and_line(run_sdtune, pipeline, tmp_path, one_line_error, row):
    folder = tmp_path / "badjson"
    folder.mkdir()
    dataset_images.gradient(R, R).save(folder / "a.png")
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n\n' + row + "\n")
    proc = run_sdtune("train", "--model", pipeline("tiny")[0], "--data", folder, "--out", tmp_path / "out",
                      "--resolution", R, "--max-steps", 1, check=False)
    one_line_error(proc, str(folder / "metadata.jsonl"), "line 3")
    assert not (tmp_path / "out").exists()


def test_empty_folder_is_an_error(dump, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    proc = dump(folder, "--resolution", R, check=False)
    assert proc.returncode != 0 and "no usable image" in proc.stderr


def test_crop_placement_names_the_crop(dump_bin, tmp_path):
    """What SDXL is conditioned on (data::CropPlacement): for random crops with flips of images
    already at the resolution's height (so that resizing is the identity), every draw's pixels are
    the source's pixels at the placement it reports: (top, left) in the image, or, for a flipped
    draw, in the mirrored image. Source and crop sizes are the file's and the resolution's."""
    folder = tmp_path / "crops"
    folder.mkdir()
    rng = np.random.default_rng(5)
    sources = {"a.png": (rng.random((R, R + 40, 3)) * 255).astype(np.uint8),  # wide: left varies
               "b.png": (rng.random((R + 24, R, 3)) * 255).astype(np.uint8)}  # tall: top varies
    for name, pixels in sources.items():
        Image.fromarray(pixels).save(folder / name)
    out = tmp_path / "dump.safetensors"
    proc = subprocess.run([str(dump_bin), "--data", str(folder), "--out", str(out), "--resolution", str(R),
                           "--random-flip", "--repeat", "40", "--seed", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    flips, offsets = 0, set()
    with safe_open(str(out), "pt") as f:
        for i, name in enumerate(sorted(sources)):
            src = sources[name]
            draws, places = f.get_tensor(f"image.{i}"), f.get_tensor(f"placement.{i}")
            for image, (h, w, top, left, ch, cw) in zip(draws, places.tolist()):
                assert (h, w, ch, cw) == (src.shape[0], src.shape[1], R, R)
                pixels = ((image.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
                plain = np.array_equal(pixels, src[top:top + R, left:left + R])
                mirrored = np.array_equal(pixels, src[:, ::-1][top:top + R, left:left + R])
                assert plain != mirrored, (name, top, left)  # exactly one reading holds
                flips += mirrored
                offsets.add((name, top, left))
    assert 20 < flips < 60 and len(offsets) > 20
