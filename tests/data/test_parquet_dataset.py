"""Hugging Face parquet datasets (src/io/parquet.cpp, data::open_dataset) through
tests/data/dataset_dump.cpp: the files are written here with pyarrow in the layout datasets uses
(an Image feature is a struct {bytes, path}), from the images of tests/helpers/dataset_images.py,
and what training sees is checked against the same images read from a folder and against PIL."""

import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageOps
from safetensors import safe_open

import dataset_images
from binaries import built_binary

REPO = Path(__file__).resolve().parents[2]
R = 64
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Image feature


@pytest.fixture(scope="session")
def dump_bin():
    return built_binary("sdtune_dataset_dump")


@pytest.fixture
def dump(dump_bin, tmp_path):
    """dump(data, *args, check=True) -> (images: list, captions: list, files: list of the
    examples' names, skipped: list of {"path", "reason"}, stderr); with check=False the
    CompletedProcess."""

    def run(data, *args, check=True):
        out = tmp_path / f"dump_{len(list(tmp_path.glob('dump_*')))}.safetensors"
        proc = subprocess.run(
            [str(dump_bin), "--data", str(data), "--out", str(out), *map(str, args)],
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
        files = [meta[f"file.{i}"] for i in range(n)]
        return images, captions, files, json.loads(meta["skipped"]), proc.stderr

    return run


def write_parquet(path, images, captions, image_column="image", caption_column="text",
                  image_type=IMAGE, caption_type=pa.string(), row_group_size=None):
    """One parquet file with an image column and a caption column, as pyarrow writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({image_column: pa.array(images, image_type),
                      caption_column: pa.array(captions, caption_type)})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def encoded(image, fmt="PNG"):
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The same images as a folder (metadata.jsonl) and as one parquet file (rows in file-name
    order, several row groups): (folder, parquet path, [(file_name, caption)] of the rows)."""
    folder = tmp_path_factory.mktemp("images")
    captions = dataset_images.make_dataset(folder, R)
    rows = sorted((name, text) for name, text in captions.items() if (folder / name).exists())
    parquet = tmp_path_factory.mktemp("hub") / "data" / "train-00000-of-00001.parquet"
    write_parquet(parquet, [{"bytes": (folder / name).read_bytes(), "path": name} for name, _ in rows],
                  [text for _, text in rows], row_group_size=4)
    assert pq.ParquetFile(parquet).num_row_groups > 1
    return folder, parquet, rows


def row_name(parquet, rows, file_name):
    i = [name for name, _ in rows].index(file_name)
    return f"{parquet}:row {i} ({file_name})"


def to_uint8(x):
    """float [3,H,W] in [-1,1] -> float [H,W,3] in 0..255."""
    return ((x + 1) * 127.5).permute(1, 2, 0).numpy()


def test_parquet_gives_what_the_folder_gives(dump, dataset):
    folder, parquet, rows = dataset
    for args in (("--center-crop",), ("--random-flip", "--seed", 5)):
        from_folder = dump(folder, "--resolution", R, *args)
        from_parquet = dump(parquet, "--resolution", R, *args)
        assert [Path(f).name for f in from_folder[2]] == [
            f.rsplit("(", 1)[1].rstrip(")") for f in from_parquet[2]]
        assert from_parquet[1] == from_folder[1]
        assert len(from_parquet[0]) == len(rows) - 2  # the corrupt and the truncated file
        for a, b, name in zip(from_folder[0], from_parquet[0], from_parquet[2]):
            assert torch.equal(a, b), name


def test_the_hub_folder_layout_is_found(dump, dataset):
    _, parquet, rows = dataset
    _, captions, files, _, _ = dump(parquet.parent.parent, "--resolution", R, "--center-crop")
    assert files[0] == row_name(parquet, rows, rows[0][0])
    assert captions == [text for name, text in rows if name not in ("corrupt.jpg", "truncated.png")]


def test_bad_rows_are_skipped_and_named(dump, dataset):
    _, parquet, rows = dataset
    images, _, files, skipped, stderr = dump(parquet, "--resolution", R, "--center-crop")
    bad = [row_name(parquet, rows, "corrupt.jpg"), row_name(parquet, rows, "truncated.png")]
    assert sorted(s["path"] for s in skipped) == sorted(bad)
    for name in bad:
        assert f"sdtune: warning: skipping {name}: " in stderr
    assert sum("sdtune: warning: skipping" in line for line in stderr.splitlines()) == 2
    reasons = {s["path"]: s["reason"] for s in skipped}
    assert "png" in reasons[bad[1]].lower() and "jpeg" not in reasons[bad[1]].lower()
    assert len(images) + len(skipped) == len(rows) and not set(files) & set(bad)


def pil_reference(data, size):
    """What the image should look like, computed with PIL: EXIF orientation applied, 16-bit
    samples scaled to 8 bits, alpha composited onto white, then diffusers' Resize (Lanczos) of the
    shorter side + CenterCrop. float [H,W,3] in 0..255."""
    from torchvision import transforms

    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if img.mode.startswith("I"):
        img = Image.fromarray((np.asarray(img, np.float64) / 257).round().astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    t = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.LANCZOS),
                            transforms.CenterCrop(size)])
    return np.asarray(t(img.convert("RGB")), np.float64)


# Mean |difference| allowed against PIL, 0..255 (measured: 0 to 0.3, 1.3 for the upscaled
# small.png): libvips and PIL resample with slightly different Lanczos kernels, and libvips scales
# 16 bits to 8 by 256, not 257. A decoding mistake (orientation ignored, alpha onto black, 16-bit
# samples clipped) costs tens.
@pytest.mark.parametrize("name, tolerance", [("rgb.jpg", 0.5), ("rgb.png", 0.25), ("grey.png", 0.25),
                                             ("deep.png", 0.6), ("alpha.png", 0.25), ("exif.jpg", 0.25),
                                             ("small.png", 2.0)])
def test_rows_decode_as_pil_does(dump, dataset, name, tolerance):
    folder, parquet, rows = dataset
    images, _, files, _, _ = dump(parquet, "--resolution", R, "--center-crop")
    got = to_uint8(images[files.index(row_name(parquet, rows, name))])
    want = pil_reference((folder / name).read_bytes(), R)
    assert got.shape == want.shape == (R, R, 3)
    assert np.abs(got - want).mean() < tolerance, np.abs(got - want).mean()


def test_cmyk_row_becomes_red(dump, dataset):
    # PIL converts CMYK to RGB without a colour profile and libvips with one, so only the colour is
    # compared: pure red in CMYK, as test_caption_dataset.py checks for the folder.
    folder, parquet, rows = dataset
    images, _, files, _, _ = dump(parquet, "--resolution", R, "--center-crop")
    got = to_uint8(images[files.index(row_name(parquet, rows, "cmyk.jpg"))]).reshape(-1, 3).mean(0)
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    assert got[0] > 200 and got[1] < 60 and got[2] < 60, got


def test_null_and_list_captions(dump, tmp_path):
    png = encoded(dataset_images.gradient(R, R))
    a = write_parquet(tmp_path / "a.parquet", [{"bytes": png, "path": None}] * 3, ["x", None, ""])
    assert dump(a, "--resolution", R)[1] == ["x", "", ""]
    b = write_parquet(tmp_path / "b.parquet", [{"bytes": png, "path": "p.png"}] * 4,
                      [["first", "second"], [], None, [None, "later"]], caption_type=pa.list_(pa.string()))
    _, captions, files, _, _ = dump(b, "--resolution", R)
    assert captions == ["first", "", "", ""]
    assert files == [f"{b}:row {i} (p.png)" for i in range(4)]


def test_null_image_row_is_skipped(dump, tmp_path):
    png = encoded(dataset_images.gradient(R, R))
    f = write_parquet(tmp_path / "n.parquet", [{"bytes": png, "path": "a.png"}, None,
                                               {"bytes": None, "path": "gone.png"}], ["a", "b", "c"])
    _, captions, _, skipped, stderr = dump(f, "--resolution", R)
    assert captions == ["a"]
    assert [s["path"] for s in skipped] == [f"{f}:row 1", f"{f}:row 2 (gone.png)"]
    assert f"sdtune: warning: skipping {f}:row 1: " in stderr


@pytest.mark.parametrize("image_type, caption_type", [(pa.binary(), pa.string()),
                                                      (pa.large_binary(), pa.large_string())])
def test_plain_binary_image_column(dump, tmp_path, image_type, caption_type):
    pictures = [dataset_images.halves(R, R), dataset_images.gradient(R, R)]
    f = write_parquet(tmp_path / "plain.parquet", [encoded(p) for p in pictures], ["h", "g"],
                      image_type=image_type, caption_type=caption_type)
    images, captions, files, _, _ = dump(f, "--resolution", R, "--center-crop")
    assert captions == ["h", "g"] and files == [f"{f}:row 0", f"{f}:row 1"]
    for got, picture in zip(images, pictures):
        assert np.abs(to_uint8(got) - np.asarray(picture, np.float64)).max() < 1.0


def test_custom_columns_and_missing_column(dump, tmp_path):
    png = encoded(dataset_images.gradient(R, R))
    f = write_parquet(tmp_path / "custom.parquet", [{"bytes": png, "path": "a.png"}], ["a prompt"],
                      image_column="picture", caption_column="prompt")
    _, captions, _, _, _ = dump(f, "--resolution", R, "--image-column", "picture",
                                "--caption-column", "prompt")
    assert captions == ["a prompt"]
    for args, missing in (((), "image"), (("--image-column", "picture"), "text")):
        proc = dump(f, "--resolution", R, *args, check=False)
        assert proc.returncode != 0
        assert len(proc.stderr.strip().splitlines()) == 1
        assert str(f) in proc.stderr and f"'{missing}'" in proc.stderr
        assert "picture" in proc.stderr and "prompt" in proc.stderr  # the columns there are


def test_several_files_are_read_in_order(dump, tmp_path):
    hub = tmp_path / "hub"
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    pictures = [Image.new("RGB", (R, R), c) for c in colours]
    rows = [{"bytes": encoded(p), "path": f"{i}.png"} for i, p in enumerate(pictures)]
    # Written second-file-first: the order must come from the names, not the directory.
    second = write_parquet(hub / "data" / "train-00001-of-00002.parquet", rows[3:], ["d", "e"])
    first = write_parquet(hub / "data" / "train-00000-of-00002.parquet", rows[:3], ["a", "b", "c"],
                          row_group_size=1)
    (hub / "README.md").write_text("---\nlicense: cc0\n---\n")
    images, captions, files, _, _ = dump(hub, "--resolution", R, "--center-crop")
    assert captions == ["a", "b", "c", "d", "e"]
    assert files == [f"{first}:row {i} ({i}.png)" for i in range(3)] + [
        f"{second}:row {i} ({i + 3}.png)" for i in range(2)]
    for got, colour in zip(images, colours):
        assert np.abs(to_uint8(got) - np.array(colour)).max() < 1.0


def test_all_rows_bad_is_an_error(dump, tmp_path):
    corrupt = tmp_path / "c.jpg"
    dataset_images.write_corrupt_jpeg(corrupt)
    f = write_parquet(tmp_path / "corrupt.parquet", [{"bytes": corrupt.read_bytes(), "path": "c.jpg"}] * 2,
                      ["a", "b"])
    proc = dump(f, "--resolution", R, check=False)
    assert proc.returncode != 0 and "no usable image" in proc.stderr
    assert f"skipping {f}:row 1 (c.jpg)" in proc.stderr
    g = write_parquet(tmp_path / "null.parquet", [None, {"bytes": None, "path": "x.png"}], ["a", "b"])
    proc = dump(g, "--resolution", R, check=False)
    assert proc.returncode != 0 and "no usable image" in proc.stderr and str(g) in proc.stderr


def test_not_parquet_and_missing_path(dump, tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    proc = dump(bad, "--resolution", R, check=False)
    assert proc.returncode != 0 and str(bad) in proc.stderr
    proc = dump(tmp_path / "nowhere", "--resolution", R, check=False)
    assert proc.returncode != 0 and str(tmp_path / "nowhere") in proc.stderr


def test_a_row_group_declaring_billions_of_rows_is_refused(run_sdtune, pipeline, tmp_path, one_line_error):
    """Found by fuzzing (fuzz/parquet_schema_fuzz.cpp): a 1000-byte file whose row group declares
    95674103420 rows made Arrow allocate for them (256 GiB asked, over 2 GB resident before it was
    killed). Arrow's pool is capped per file, so it is a one-line error."""
    bomb = Path(__file__).parents[2] / "fuzz/corpus/parquet_schema_fuzz/regression-row-group-declares-95e9-rows.parquet"
    assert bomb.stat().st_size < 2000
    proc = run_sdtune("train", "--model", pipeline("tiny")[0], "--data", bomb, "--out", tmp_path / "out",
                      "--resolution", 32, "--max-steps", 1, check=False)
    one_line_error(proc, str(bomb), "row group 0 declares 95674103420 rows, more than 4096 MiB to decode")
    assert not (tmp_path / "out").exists()
