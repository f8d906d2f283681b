"""Training teaches: a tiny pipeline trained by `sdtune train` on 4 image–caption pairs must (1)
bring its loss down clearly and (2) generate, from those captions, images closer to the training
images than the untrained pipeline does (PSNR, stated in the test output).

The tiny pipeline's VAE is random, so two things are set up the way a real SD VAE already is:
its posterior is made nearly deterministic (logvar ≈ −16; a random VAE has std ≈ 1, which would
bury the image in the latent sample) and its scaling_factor gives unit-variance latents. The
images are compared with what the VAE can represent: its reconstruction decode(mean(encode(x))),
computed here with diffusers, which is the best any UNet could generate through this VAE."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

R = 32
SHAPES = [("red", "square", (220, 30, 30)), ("green", "circle", (30, 200, 60)),
          ("blue", "square", (30, 60, 220)), ("yellow", "circle", (230, 210, 40))]
STEPS = 600
MIN_GAIN_DB = 1.0  # the trained pipeline must beat the untrained one by at least this much
MIN_LOSS_DROP = 3.0  # mean loss of the first 10% of steps / last 10%


def psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def prepare_pipeline(src, dst, images):
    from diffusers import AutoencoderKL

    shutil.copytree(src, dst)
    vae = AutoencoderKL.from_pretrained(dst / "vae")
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[c:] = 0
        vae.quant_conv.bias[c:] = -16.0
        x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 127.5 - 1 for im in images])
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.save_pretrained(dst / "vae")
    return vae


def make_images():
    images, captions = [], []
    yy, xx = np.mgrid[:R, :R]
    for colour, shape, rgb in SHAPES:
        im = np.full((R, R, 3), 255, np.uint8)
        if shape == "square":
            im[8:24, 8:24] = rgb
        else:
            im[(yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 64] = rgb
        images.append(im)
        captions.append(f"a {colour} {shape}")
    return images, captions


def generate_psnr(run_sdtune, model, vae, images, captions, tmp_path, tag):
    values = []
    for i, (im, caption) in enumerate(zip(images, captions)):
        x = torch.from_numpy(im).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample[0]
        target = ((rec.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().numpy().astype(np.uint8)
        out = tmp_path / f"{tag}-{i}.png"
        # No classifier-free guidance: the captions were always given in training.
        run_sdtune("generate", "--model", model, "--prompt", caption, "--guidance-scale", 1, "--steps", 25,
                   "--scheduler", "ddim", "--seed", 1, "--out", out, "--quiet")
        values.append(psnr(np.array(Image.open(out)), target))
    return values


def test_training_reproduces_the_training_images(pipeline, run_sdtune, tmp_path):
    images, captions = make_images()
    data = tmp_path / "data"
    data.mkdir()
    for i, (im, caption) in enumerate(zip(images, captions)):
        Image.fromarray(im).save(data / f"{i}.png")
    (data / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "text": c}) + "\n" for i, c in enumerate(captions)))
    base = tmp_path / "base"
    vae = prepare_pipeline(Path(pipeline("tiny")[0]), base, images)

    out = tmp_path / "out"
    run_sdtune("train", "--model", base, "--data", data, "--out", out, "--resolution", R, "--center-crop",
               "--batch-size", 4, "--max-steps", STEPS, "--learning-rate", 2e-3, "--lr-warmup-steps", 0,
               "--checkpointing-steps", 0, "--seed", 0, "--quiet")

    losses = [json.loads(line)["loss"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    k = STEPS // 10
    first, last = np.mean(losses[:k]), np.mean(losses[-k:])
    print(f"\nloss: mean of the first {k} steps {first:.4f}, of the last {k} {last:.4f}")
    assert first / last >= MIN_LOSS_DROP, f"the loss did not fall clearly: {first:.4f} -> {last:.4f}"

    before = generate_psnr(run_sdtune, base, vae, images, captions, tmp_path, "untrained")
    after = generate_psnr(run_sdtune, out, vae, images, captions, tmp_path, "trained")
    print(f"PSNR against the training images (through the VAE): untrained {np.mean(before):.2f} dB "
          f"{[round(v, 1) for v in before]}, trained {np.mean(after):.2f} dB {[round(v, 1) for v in after]}")
    assert np.mean(after) >= np.mean(before) + MIN_GAIN_DB
    assert all(a > b for a, b in zip(after, before)), "some caption's image got no closer"
