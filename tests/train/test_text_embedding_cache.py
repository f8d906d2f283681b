"""--cache-text-encoder-outputs: the frozen text encoder's caption embeddings, computed once, kept on
disk keyed by the token ids and the encoder, reused by later runs; training with them is training
without them."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from parity import check
from reference_training import check_update, make_data, reference_run
from safetensors.torch import load_file
from train_runs import metrics

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


def test_text_cache_at_batch_2_trains_as_uncached(tiny, run_sdtune, tmp_path):
    """Batches of 2. The cache runs the text encoder on one caption at a time, the plain run on the
    batch's two, and MKL/oneDNN block a matmul differently for different row counts on some CPUs
    (AVX2) but not on others (AVX-512): the embeddings agree to float rounding, not bitwise. So do
    both trainings, then: the step-1 loss to float rounding, and the weights (EMA) as close to
    diffusers' exact (float64) training as torch's own float32 run of it is
    (tests/helpers/reference_training.py). The bitwise claim holds where the shapes are the same:
    batch 1, above. Embeddings are not computed one caption per forward in the plain run to make it
    bitwise here: that would cost a batch-size-fold more text-encoder launches per step."""
    images, captions = make_data(tmp_path / "data", CAPTIONS)
    common = ["--center-crop", "--use-ema"]
    run_sdtune(*train_args(tiny, tmp_path / "data", tmp_path / "plain", *common))
    run_sdtune(*train_args(tiny, tmp_path / "data", tmp_path / "cached", *common, "--cache-text-encoder-outputs",
                           "--cache-dir", tmp_path / "cache"))
    plain, cached = ([m["loss"] for m in metrics(tmp_path / run)] for run in ("plain", "cached"))
    check("text cache at batch 2: step-1 loss", torch.tensor(cached[0]), torch.tensor(plain[0]), 1e-6)
    check("text cache at batch 2: losses", torch.tensor(cached), torch.tensor(plain), 1e-5)
    run = dict(steps=3, batch=2, accum=1, lr=1e-3, seed=7, use_ema=True)
    _, before, _, averaged, _ = reference_run(tiny, images, captions, **run)
    _, _, _, exact, _ = reference_run(tiny, images, captions, dtype=torch.float64, **run)
    for name in ("plain", "cached"):
        check_update(f"text cache at batch 2: {name} run", unet(tmp_path / name), averaged, exact, before, 1e-3)


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


def test_sdxl_cached_run_trains_exactly_as_uncached(pipeline, run_sdtune, tmp_path):
    """SDXL: an entry holds both encoders' hidden states side by side and the pooled projection
    (train_text_to_image_sdxl.py's precomputed prompt_embeds and pooled_prompt_embeds); the time ids
    still come from each image. Batch 1, as above: bitwise."""
    xl = pipeline("sdxl")[0]
    data = make_images(tmp_path / "data", CAPTIONS)
    common = ["--random-flip", "--center-crop", "--batch-size", 1]
    run_sdtune(*train_args(xl, data, tmp_path / "plain", *common))
    flags = ["--cache-text-encoder-outputs", "--cache-latents", "--cache-dir", tmp_path / "cache"]
    first = run_sdtune(*train_args(xl, data, tmp_path / "first", *common, *flags))
    second = run_sdtune(*train_args(xl, data, tmp_path / "second", *common, *flags))
    assert "text embedding cache: 0 read, 3 computed" in first.stdout
    assert "text embedding cache: 3 read, 0 computed" in second.stdout
    ref = unet(tmp_path / "plain")
    for run in ("first", "second"):
        ours = unet(tmp_path / run)
        assert all(torch.equal(ref[k], ours[k]) for k in ref), run
    base = load_file(Path(xl) / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(base[k], ref[k]) for k in base)
    # The SD 1.x cache's entries are not SDXL's: another scope, so nothing is shared.
    tiny = pipeline("tiny")[0]
    run_sdtune(*train_args(tiny, data, tmp_path / "sd1", *common, *flags))
    assert len(entries(tmp_path / "cache")) == 6


def test_sdxl_entries_are_diffusers_prompt_embeds(pipeline, run_sdtune, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    xl = pipeline("sdxl")[0]
    data = make_images(tmp_path / "data", ["Yoda ninja portrait"])
    cache = tmp_path / "cache"
    run_sdtune(*train_args(xl, data, tmp_path / "out", "--cache-text-encoder-outputs", "--cache-dir", cache,
                           "--max-steps", 1, "--batch-size", 1))
    (entry,) = entries(cache)
    ours = load_file(entry)
    pipe = StableDiffusionXLPipeline.from_pretrained(xl)
    with torch.no_grad():
        context, _, pooled, _ = pipe.encode_prompt("Yoda ninja portrait", do_classifier_free_guidance=False)
    check("SDXL text cache: context", ours["context"], context[0], 1e-5)
    check("SDXL text cache: pooled", ours["text_embeds"], pooled[0], 1e-5)
