"""DreamBooth teaches: on a tiny pipeline (set up as in test_learning.py), `sdtune dreambooth`
brings the instance loss down and makes the instance prompt ("a sks shape") generate images
closer to the instance images than the base model does (PSNR, printed).

What prior preservation keeps is measured where the base model knows its classes: the tiny world
(tests/world/test_prior_preservation.py). This untrained base model's class images are noise that
800 steps do not learn to redraw, so a prior run here would only cost CI time."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from test_learning import prepare_pipeline, psnr

R = 32
STEPS = 800
INSTANCE_PROMPT = "a sks shape"
SEEDS = [0, 1, 2]


def instance_images():
    """One concept (a magenta plus) in three places."""
    images = []
    for dy, dx in [(0, 0), (3, -2), (-2, 3)]:
        im = np.full((R, R, 3), 255, np.uint8)
        cy, cx = 16 + dy, 16 + dx
        im[cy - 9 : cy + 9, cx - 3 : cx + 3] = (210, 40, 200)
        im[cy - 3 : cy + 3, cx - 9 : cx + 9] = (210, 40, 200)
        images.append(im)
    return images


def generate(run_sdtune, model, prompt, seed, out):
    # The model's own scheduler, 20 steps, no guidance.
    run_sdtune("generate", "--model", model, "--prompt", prompt, "--guidance-scale", 1, "--steps", 20,
               "--seed", seed, "--out", out, "--quiet")
    return np.asarray(Image.open(out)).astype(np.float64)


def test_dreambooth_learns_the_instance(pipeline, run_sdtune, tmp_path):
    images = instance_images()
    data = tmp_path / "instance"
    data.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(data / f"{i}.png")
    base = tmp_path / "base"
    vae = prepare_pipeline(Path(pipeline("tiny")[0]), base, images)
    with torch.no_grad():
        x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 127.5 - 1 for im in images])
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    targets = [((r.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().numpy() for r in rec]

    common = ["--resolution", R, "--center-crop", "--batch-size", 3, "--max-steps", STEPS, "--learning-rate", 2e-3,
              "--lr-warmup-steps", 0, "--checkpointing-steps", 0, "--seed", 0, "--quiet"]
    run_sdtune("dreambooth", "--model", base, "--instance-data", data, "--instance-prompt", INSTANCE_PROMPT,
               "--out", tmp_path / "trained", *common)

    # 1. The instance loss falls.
    metrics = [json.loads(l) for l in (tmp_path / "trained" / "logs" / "metrics.jsonl").read_text().splitlines()]
    k = STEPS // 10
    first, last = np.mean([m["loss"] for m in metrics[:k]]), np.mean([m["loss"] for m in metrics[-k:]])
    print(f"\ninstance loss: first {k} steps {first:.4f}, last {k} {last:.4f}")
    assert first / last >= 2.0

    # 2. The instance prompt draws the instance: PSNR to the closest instance image (through the VAE).
    def fidelity(model, tag):
        drawn = [generate(run_sdtune, model, INSTANCE_PROMPT, s, tmp_path / f"{tag}-i{s}.png") for s in SEEDS]
        return np.mean([max(psnr(d, t) for t in targets) for d in drawn])

    before, after = fidelity(base, "base"), fidelity(tmp_path / "trained", "trained")
    print(f"instance prompt, PSNR to the closest instance image: base {before:.2f} dB, trained {after:.2f} dB")
    assert after >= before + 1.0
