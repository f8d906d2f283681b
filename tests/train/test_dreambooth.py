"""`sdtune dreambooth` (diffusers' train_dreambooth.py): instance images with one prompt, class
images with the class prompt, loss = instance loss + prior_loss_weight · prior loss. The losses
are checked step by step against that formula computed here with diffusers' models on the same
batches and random draws; class images are generated only where missing."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity import check
from PIL import Image
from train_runs import metrics, random_images

R = 32
INSTANCE_PROMPT = "a photo of sks dog"
CLASS_PROMPT = "a photo of a dog"


def dreambooth_args(model, instance, out, *extra):
    return ["dreambooth", "--model", model, "--instance-data", instance, "--instance-prompt", INSTANCE_PROMPT,
            "--out", out, "--resolution", R, "--center-crop", "--learning-rate", 1e-3, "--lr-warmup-steps", 0,
            "--seed", 7, "--checkpointing-steps", 0, "--quiet", *extra]


def reference_losses(folder, instances, classes, *, steps, batch, seed, lr, weight, snr_gamma=None):
    """train_dreambooth.py's step on our batches: an epoch permutes max(n, m) items (seed + epoch),
    item i is instance i mod n and class i mod m, a batch is [instances; classes]."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import compute_snr
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").train()
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2, fused=True)
    to_pixels = lambda im: torch.from_numpy(im).permute(2, 0, 1).float() / 127.5 - 1
    ids = lambda prompt, k: tokenizer([prompt] * k, max_length=77, padding="max_length", truncation=True,
                                      return_tensors="pt").input_ids
    n, m = len(instances), len(classes)
    items = max(n, m)

    def batches():
        epoch = 0
        while True:
            perm = torch.randperm(items, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            for i in range(0, items, batch):
                yield perm[i : i + batch]
            epoch += 1

    order, g = batches(), torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(steps):
        idx = next(order)
        x = torch.stack([to_pixels(instances[i % n]) for i in idx] + [to_pixels(classes[i % m]) for i in idx])
        input_ids = torch.cat([ids(INSTANCE_PROMPT, len(idx)), ids(CLASS_PROMPT, len(idx))])
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=g) * vae.config.scaling_factor
            context = text_encoder(input_ids, return_dict=False)[0]
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g)
        pred = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, context, return_dict=False)[0]
        pred, pred_prior = torch.chunk(pred, 2, dim=0)
        target, target_prior = torch.chunk(noise, 2, dim=0)
        prior_loss = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
        if snr_gamma is None:
            instance_loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        else:
            # min-SNR on the instance half with its own timesteps (train_dreambooth.py weighs the
            # instance half with the weights of the whole batch, a shape mismatch there).
            snr = compute_snr(scheduler, timesteps[: len(idx)])
            w = torch.stack([snr, snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0] / snr
            instance_loss = F.mse_loss(pred.float(), target.float(), reduction="none")
            instance_loss = (instance_loss.mean(dim=[1, 2, 3]) * w).mean()
        loss = instance_loss + weight * prior_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        out.append((loss.item(), instance_loss.item(), prior_loss.item()))
    return out


@pytest.mark.parametrize("snr_gamma", [None, 5.0], ids=["mse", "min-snr"])
def test_prior_preservation_losses_match_the_formula(pipeline, run_sdtune, tmp_path, snr_gamma):
    folder, _ = pipeline("tiny")
    instances = random_images(tmp_path / "instance", 3, seed=1)
    classes = random_images(tmp_path / "class", 2, seed=2)  # a user's own class images: none generated
    extra = ["--with-prior-preservation", "--class-prompt", CLASS_PROMPT, "--class-data", tmp_path / "class",
             "--num-class-images", 2, "--prior-loss-weight", 0.5, "--batch-size", 2, "--max-steps", 3]
    if snr_gamma:
        extra += ["--snr-gamma", snr_gamma]
    proc = run_sdtune(*dreambooth_args(folder, tmp_path / "instance", tmp_path / "out", *extra))
    assert "instance examples: 3, class examples: 2" in proc.stdout
    assert "class images: 2 found, 0 generated" in proc.stdout
    ours = metrics(tmp_path / "out")
    ref = reference_losses(folder, instances, classes, steps=3, batch=2, seed=7, lr=1e-3, weight=0.5,
                           snr_gamma=snr_gamma)
    assert len(ours) == 3
    for k, name in enumerate(("loss", "loss_instance", "loss_prior")):
        check(f"dreambooth {name} step 1", torch.tensor(ours[0][name]), torch.tensor(ref[0][k]), 1e-6)
        check(f"dreambooth {name}", torch.tensor([m[name] for m in ours]), torch.tensor([r[k] for r in ref]), 1e-5)
    # The total is the formula of its parts, and the prior term is not negligible.
    for m in ours:
        assert m["loss"] == pytest.approx(m["loss_instance"] + 0.5 * m["loss_prior"], rel=1e-6)
        assert m["loss_prior"] > 0.1 * m["loss_instance"]


def test_missing_class_images_are_generated_and_kept(pipeline, run_sdtune, tmp_path):
    folder, _ = pipeline("tiny")
    random_images(tmp_path / "instance", 2, seed=1)
    classes = tmp_path / "class"
    extra = lambda n, out: dreambooth_args(folder, tmp_path / "instance", tmp_path / out, "--with-prior-preservation",
                                           "--class-prompt", CLASS_PROMPT, "--class-data", classes,
                                           "--num-class-images", n, "--class-inference-steps", 2,
                                           "--batch-size", 1, "--max-steps", 1)
    proc = run_sdtune(*extra(2, "a"))
    assert "class images: 0 found, 2 generated" in proc.stdout
    assert sorted(p.name for p in classes.iterdir()) == ["class-00000.png", "class-00000.txt", "class-00001.png",
                                                          "class-00001.txt"]
    assert (classes / "class-00000.txt").read_text().strip() == CLASS_PROMPT
    first = [(classes / f"class-0000{i}.png").read_bytes() for i in range(2)]
    images = [np.asarray(Image.open(classes / f"class-0000{i}.png")) for i in range(2)]
    assert images[0].shape == (R, R, 3) and not np.array_equal(images[0], images[1])  # seeds differ
    proc = run_sdtune(*extra(3, "b"))
    assert "class images: 2 found, 1 generated" in proc.stdout
    assert [(classes / f"class-0000{i}.png").read_bytes() for i in range(2)] == first
    assert "instance examples: 2, class examples: 3" in proc.stdout


def test_bad_dreambooth_input(pipeline, run_sdtune, tmp_path):
    folder, _ = pipeline("tiny")
    random_images(tmp_path / "instance", 2, seed=1)
    (tmp_path / "empty").mkdir()
    cases = [
        (dreambooth_args(folder, tmp_path / "instance", tmp_path / "o1", "--with-prior-preservation",
                         "--class-data", tmp_path / "class"), "--with-prior-preservation needs --class-prompt"),
        (dreambooth_args(folder, tmp_path / "instance", tmp_path / "o2", "--with-prior-preservation",
                         "--class-prompt", CLASS_PROMPT), "--with-prior-preservation needs --class-data"),
        (dreambooth_args(folder, tmp_path / "empty", tmp_path / "o3"), str(tmp_path / "empty")),
        ([a for a in dreambooth_args(folder, tmp_path / "instance", tmp_path / "o4") if a != INSTANCE_PROMPT
          and a != "--instance-prompt"], "--instance-prompt is required"),
    ]
    for args, message in cases:
        proc = run_sdtune(*args, check=False)
        assert proc.returncode != 0, args
        assert message in proc.stderr, (message, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_repeats_make_an_epoch_of_repeated_instances(pipeline, run_sdtune, tmp_path):
    """kohya's repeats: 2 instance images × 3 repeats, paired with 2 class images, is an epoch of
    max(6, 2) = 6 pairs: 6 steps at batch 1."""
    folder, _ = pipeline("tiny")
    random_images(tmp_path / "instance", 2, seed=1)
    random_images(tmp_path / "class", 2, seed=2)
    proc = run_sdtune(*dreambooth_args(folder, tmp_path / "instance", tmp_path / "out", "--with-prior-preservation",
                                       "--class-prompt", CLASS_PROMPT, "--class-data", tmp_path / "class",
                                       "--num-class-images", 2, "--repeats", 3, "--batch-size", 1,
                                       "--num-train-epochs", 1))
    assert "steps: 6 (this run 6" in proc.stdout
    epochs = [m["epoch"] for m in metrics(tmp_path / "out")]
    assert len(epochs) == 6


def test_class_latents_are_cached_too(pipeline, run_sdtune, tmp_path):
    """--cache-latents covers the class images: the second run reads all 5 entries back and trains
    as the first did; both agree with an uncached run to rounding (the cache encodes one image at a
    time, the uncached run an instance and a class image together)."""
    folder, _ = pipeline("tiny")
    random_images(tmp_path / "instance", 3, seed=1)
    random_images(tmp_path / "class", 2, seed=2)
    common = ["--with-prior-preservation", "--class-prompt", CLASS_PROMPT, "--class-data", tmp_path / "class",
              "--num-class-images", 2, "--batch-size", 1, "--max-steps", 3]
    cached = [*common, "--cache-latents", "--cache-dir", tmp_path / "cache"]
    run_sdtune(*dreambooth_args(folder, tmp_path / "instance", tmp_path / "plain", *common))
    first = run_sdtune(*dreambooth_args(folder, tmp_path / "instance", tmp_path / "a", *cached))
    second = run_sdtune(*dreambooth_args(folder, tmp_path / "instance", tmp_path / "b", *cached))
    assert "latent cache: 0 read, 5 computed" in first.stdout
    assert "latent cache: 5 read, 0 computed" in second.stdout
    la, lb, lp = ([m["loss"] for m in metrics(tmp_path / r)] for r in ("a", "b", "plain"))
    assert la == lb
    assert np.allclose(la, lp, rtol=1e-5, atol=0)
