"""--cache-text-encoder-outputs: the frozen text encoder's caption embeddings, computed once, kept on
disk keyed by the token ids and the encoder, reused by later runs; training with them is training
without them."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

R = 32


def make_images(folder, captions, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, caption in enumerate(captions):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": caption})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def train_args(model, data, out, *extra):
    return ["train", "--model", model, "--data", data, "--out", out, "--resolution", R, "--batch-size", 2,
            "--lr-warmup-steps", 0, "--learning-rate", 1e-3, "--max-steps", 3, "--checkpointing-steps", 0,
            "--seed", 7, "--quiet", *extra]


def unet(out):
    return load_file(Path(out) / "unet" / "diffusion_pytorch_model.safetensors")


def entries(cache):
    return sorted((Path(cache) / "text").glob("*/*.safetensors"))


@pytest.fixture(scope="module")
def tiny(pipeline):
    return pipeline("tiny")[0]


CAPTIONS = ["a red circle", "a blue square", "a red circle", ""]


def test_cached_run_trains_exactly_as_uncached(tiny, run_sdtune, tmp_path):
    data = make_images(tmp_path / "data", CAPTIONS)
    # Batch 1: the latent cache encodes one image at a time, as the plain run then does too.
    common = ["--random-flip", "--center-crop", "--batch-size", 1]
    run_sdtune(*train_args(tiny, data, tmp_path / "plain", *common))
    cache = tmp_path / "cache"
    flags = ["--cache-text-encoder-outputs", "--cache-latents", "--cache-dir", cache]
    first = run_sdtune(*train_args(tiny, data, tmp_path / "first", *common, *flags))
    second = run_sdtune(*train_args(tiny, data, tmp_path / "second", *common, *flags))
    # Three distinct captions (the empty one included): three entries, the repeat shares one.
    assert "text embedding cache: 0 read, 3 computed" in first.stdout
    assert "text embedding cache: 3 read, 0 computed" in second.stdout
    assert len(entries(cache)) == 3
    ref = unet(tmp_path / "plain")
    for run in ("first", "second"):
        ours = unet(tmp_path / run)
        assert all(torch.equal(ref[k], ours[k]) for k in ref), run
    base = load_file(Path(tiny) / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(base[k], ref[k]) for k in base)


def test_text_cache_alone_is_bitwise(tiny, run_sdtune, tmp_path):
    """Batches of 2: each caption's embedding does not depend on the batch it is in."""
    data = make_images(tmp_path / "data", CAPTIONS)
    run_sdtune(*train_args(tiny, data, tmp_path / "plain", "--use-ema"))
    run_sdtune(*train_args(tiny, data, tmp_path / "cached", "--use-ema", "--cache-text-encoder-outputs",
                           "--cache-dir", tmp_path / "cache"))
    a, b = unet(tmp_path / "plain"), unet(tmp_path / "cached")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_entries_are_the_text_encoders_last_hidden_state(tiny, run_sdtune, tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer

    data = make_images(tmp_path / "data", ["Yoda ninja portrait", "Yoda ninja portrait"])
    cache = tmp_path / "cache"
    run_sdtune(*train_args(tiny, data, tmp_path / "out", "--cache-text-encoder-outputs", "--cache-dir", cache,
                           "--max-steps", 1))
    (entry,) = entries(cache)
    ours = load_file(entry)["last_hidden_state"]
    tokenizer = CLIPTokenizer.from_pretrained(Path(tiny) / "tokenizer")
    model = CLIPTextModel.from_pretrained(Path(tiny) / "text_encoder").eval()
    ids = tokenizer(["Yoda ninja portrait"], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).last_hidden_state[0]
    assert ours.shape == ref.shape
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_a_trained_text_encoder_cannot_be_cached(tiny, run_sdtune, tmp_path):
    data = make_images(tmp_path / "data", CAPTIONS)
    proc = run_sdtune(*train_args(tiny, data, tmp_path / "out", "--cache-text-encoder-outputs",
                                  "--train-text-encoder", "--cache-dir", tmp_path / "cache"), check=False)
    assert proc.returncode != 0
    assert "--cache-text-encoder-outputs needs a frozen text encoder" in proc.stderr
    assert not (tmp_path / "cache").exists()
