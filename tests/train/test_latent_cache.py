"""--cache-latents: VAE posteriors computed once, kept on disk keyed by content and settings,
reused by later runs, and sampled afresh at every step, so that a cached run trains exactly as an
uncached one does."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

R = 32


def make_images(folder, sizes, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"caption number {i}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def train_args(model, data, out, *extra):
    return ["train", "--model", model, "--data", data, "--out", out, "--resolution", R, "--batch-size", 1,
            "--lr-warmup-steps", 0, "--learning-rate", 1e-3, "--max-steps", 4, "--checkpointing-steps", 0,
            "--seed", 5, "--quiet", *extra]


def unet(out):
    return load_file(Path(out) / "unet" / "diffusion_pytorch_model.safetensors")


def losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "logs" / "metrics.jsonl").read_text().splitlines()]


def entries(cache):
    return sorted((Path(cache) / "latents").glob("*/*.safetensors"))


@pytest.fixture(scope="module")
def tiny(pipeline):
    return pipeline("tiny")[0]


BUCKETS = ["--enable-bucket", "--min-bucket-reso", 16, "--max-bucket-reso", 64, "--bucket-reso-steps", 8]


@pytest.mark.parametrize("crop", [["--center-crop"], BUCKETS], ids=["center-crop", "buckets"])
def test_cached_run_trains_exactly_as_uncached(tiny, run_sdtune, tmp_path, crop):
    """Batch 1 (the cache encodes one image at a time): the same data order, flips, posterior samples
    and noise, hence bitwise the same weights and losses, on the first (computing) and the second
    (reading) run alike."""
    data = make_images(tmp_path / "data", [(48, 40), (40, 48), (32, 32), (64, 32)])
    common = [*crop, "--random-flip", "--use-ema"]
    run_sdtune(*train_args(tiny, data, tmp_path / "plain", *common))
    cache = tmp_path / "cache"
    first = run_sdtune(*train_args(tiny, data, tmp_path / "first", *common, "--cache-latents", "--cache-dir", cache))
    second = run_sdtune(*train_args(tiny, data, tmp_path / "second", *common, "--cache-latents", "--cache-dir", cache))
    assert "latent cache: 0 read, 4 computed" in first.stdout
    assert "latent cache: 4 read, 0 computed" in second.stdout
    assert len(entries(cache)) == 4
    ref = unet(tmp_path / "plain")
    for run in ("first", "second"):
        ours = unet(tmp_path / run)
        assert all(torch.equal(ref[k], ours[k]) for k in ref), run
        assert losses(tmp_path / run) == losses(tmp_path / "plain"), run
    # Training changed the model: the comparison above is not between two untouched copies.
    base = load_file(Path(tiny) / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(base[k], ref[k]) for k in base)


def test_entries_are_the_vae_posterior_of_both_orientations(tiny, pipeline, run_sdtune, tmp_path):
    """An R×R image needs no resize or crop: its entry must be diffusers' posterior of the image
    and of its mirror image, with the source size."""
    from diffusers import AutoencoderKL

    data = make_images(tmp_path / "data", [(R, R)], seed=3)
    cache = tmp_path / "cache"
    run_sdtune(*train_args(tiny, data, tmp_path / "out", "--center-crop", "--random-flip", "--cache-latents",
                           "--cache-dir", cache, "--max-steps", 1))
    (entry,) = entries(cache)
    stored = load_file(entry)
    assert stored["size"].tolist() == [R, R]
    vae = AutoencoderKL.from_pretrained(Path(tiny) / "vae").eval()
    pixels = torch.from_numpy(np.asarray(Image.open(data / "0.png").convert("RGB"))).permute(2, 0, 1)
    pixels = (pixels.float() / 127.5 - 1).unsqueeze(0)
    with torch.no_grad():
        for suffix, image in (("", pixels), ("_flipped", pixels.flip(3))):
            dist = vae.encode(image).latent_dist
            for name, ref in (("mean", dist.mean[0]), ("logvar", dist.logvar[0])):
                ours = stored[name + suffix]
                assert ours.shape == ref.shape
                err = ((ours - ref).abs().max() / ref.abs().max()).item()
                assert err <= 1e-5, (name + suffix, err)
    # The entry is a distribution, not a sample: a sample would have no spread to keep.
    assert (stored["logvar"].exp() > 0).all()


def test_keys_follow_image_content_vae_weights_and_settings(tiny, run_sdtune, tmp_path):
    data = make_images(tmp_path / "data", [(48, 40), (40, 48), (32, 32)])
    cache = tmp_path / "cache"
    args = lambda model, out, *extra: train_args(model, data, tmp_path / out, "--center-crop", "--cache-latents",
                                                 "--cache-dir", cache, "--max-steps", 1, *extra)
    assert "0 read, 3 computed" in run_sdtune(*args(tiny, "a")).stdout
    # One image's pixels change (same file name): only its entry is computed again.
    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(data / "0.png")
    assert "2 read, 1 computed" in run_sdtune(*args(tiny, "b")).stdout
    # Another resolution, random flips: other preprocessing, other entries.
    assert "0 read, 3 computed" in run_sdtune(*args(tiny, "c", "--resolution", 24)).stdout
    assert "0 read, 3 computed" in run_sdtune(*args(tiny, "d", "--random-flip")).stdout
    # Another VAE (one weight changed): every entry again.
    other = tmp_path / "other_model"
    shutil.copytree(tiny, other)
    vae_file = other / "vae" / "diffusion_pytorch_model.safetensors"
    weights = load_file(vae_file)
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, vae_file)
    assert "0 read, 3 computed" in run_sdtune(*args(other, "e")).stdout
    # And the original settings still find theirs.
    assert "3 read, 0 computed" in run_sdtune(*args(tiny, "f")).stdout
    assert len(entries(cache)) == 3 + 1 + 3 + 3 + 3


def test_damaged_entry_is_computed_again(tiny, run_sdtune, tmp_path):
    data = make_images(tmp_path / "data", [(48, 40), (40, 48)])
    cache = tmp_path / "cache"
    args = lambda out: train_args(tiny, data, tmp_path / out, "--center-crop", "--cache-latents", "--cache-dir",
                                  cache, "--max-steps", 1)
    run_sdtune(*args("a"))
    victim = entries(cache)[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated, as by a full disk
    proc = run_sdtune(*args("b"))
    assert "1 read, 1 computed" in proc.stdout
    assert "unreadable" in proc.stderr and victim.name in proc.stderr
    assert set(load_file(victim)) == {"mean", "logvar", "size"}


def test_bad_images_and_options(tiny, run_sdtune, tmp_path):
    data = make_images(tmp_path / "data", [(48, 40), (40, 48)])
    (data / "1.png").write_bytes((data / "1.png").read_bytes()[:100])  # truncated PNG
    cache = tmp_path / "cache"
    proc = run_sdtune(*train_args(tiny, data, tmp_path / "a", "--center-crop", "--cache-latents", "--cache-dir",
                                  cache, "--max-steps", 1))
    assert "examples: 1 used, 1 skipped" in proc.stdout and "1.png" in proc.stdout
    assert "latent cache: 0 read, 1 computed" in proc.stdout
    # A random crop is a new image every step: no cache can hold it.
    proc = run_sdtune(*train_args(tiny, data, tmp_path / "b", "--cache-latents", "--cache-dir", cache), check=False)
    assert proc.returncode != 0 and "--cache-latents needs --center-crop or --enable-bucket" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_parquet_rows_are_cached_by_their_bytes(tiny, run_sdtune, tmp_path):
    """The Naruto recipe's layout (data/train-*.parquet, image {bytes, path}): rows are keyed by their
    encoded bytes, so a second run reads every row's entry back and trains the same."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    rows = []
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
        rows.append({"bytes": buf.getvalue(), "path": f"{i}.jpg"})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    (tmp_path / "naruto" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"image": pa.array(rows, image_type),
                             "text": pa.array([f"a ninja number {i}" for i in range(3)])}),
                   tmp_path / "naruto" / "data" / "train-00000-of-00001.parquet")
    args = lambda out: train_args(tiny, tmp_path / "naruto", tmp_path / out, "--center-crop", "--random-flip",
                                  "--cache-latents", "--cache-text-encoder-outputs", "--cache-dir",
                                  tmp_path / "cache")
    first, second = run_sdtune(*args("a")), run_sdtune(*args("b"))
    assert "latent cache: 0 read, 3 computed" in first.stdout and "latent cache: 3 read, 0 computed" in second.stdout
    assert "text embedding cache: 3 read, 0 computed" in second.stdout
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
