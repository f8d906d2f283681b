"""The training loop (src/train/trainer.cpp) against diffusers' train_text_to_image.py, step for
step: `sdtune train` runs a few optimizer steps on a tiny pipeline, and the same steps are
computed here with diffusers' models, torch's fused AdamW, clip_grad_norm_, LambdaLR and
diffusers' EMAModel, drawing the same random numbers in the same order (the trainer's streams are
plain CPU generators: data order from seed + epoch, the VAE posterior sample, noise and timesteps
from seed + 1). Each step's loss and the final weights (trained and EMA) must agree.

Images are made at the training resolution, so that resizing and cropping are the identity on
both sides (torchvision's bilinear Resize and our Lanczos are different filters by design)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity import WORST, check
from PIL import Image
from safetensors.torch import load_file

R = 32  # the tiny VAE halves it: 16×16 latents, the tiny UNet's sample_size
CAPTIONS = ["a red square", "a green circle", "", "two blue triangles on a white background"]

# The losses of step 1 depend only on the data and the draws: they must agree to float rounding.
# Later steps and the weights go through Adam, whose first update is ≈ lr·sign(g): a gradient
# element within rounding noise of zero (|g| ≲ 1e-7 here) may take the other sign, moving that
# weight by up to 2·lr. The weight check therefore compares the update Δw = w_after − w_before
# with an absolute bound of a fraction of lr on all but such elements.
LOSS_TOLERANCE = 1e-5
FIRST_LOSS_TOLERANCE = 1e-6
UPDATE_OUTLIER_FRACTION = 1e-2


def make_data(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, caption in enumerate(CAPTIONS):
        pixels = rng.integers(0, 256, (R, R, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": caption})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # The trainer sorts by path: 0.png … 3.png.
    return [np.array(Image.open(folder / f"{i}.png")) for i in range(len(CAPTIONS))], CAPTIONS


def reference_run(folder, images, captions, *, steps, batch, accum, lr, seed, use_ema, snr_gamma=None,
                  prediction_type=None, noise_offset=0.0, train_text_encoder=False, text_encoder_lr=None,
                  lr_scheduler="constant", warmup=0, max_grad_norm=1.0):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, compute_snr
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    if prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=prediction_type)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(train_text_encoder)
    unet.train()
    text_encoder.train(train_text_encoder)
    before = {k: v.detach().clone() for k, v in unet.state_dict().items()}

    groups = [{"params": list(unet.parameters()), "lr": lr}]
    params = list(unet.parameters())
    if train_text_encoder:
        groups.append({"params": list(text_encoder.parameters()), "lr": text_encoder_lr or lr})
        params += list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8, fused=True)
    lr_sched = get_scheduler(lr_scheduler, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    ema = EMAModel(unet.parameters()) if use_ema else None

    pixels = [torch.from_numpy(im).permute(2, 0, 1).float() / 127.5 - 1 for im in images]
    ids = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids

    # BatchSampler: a permutation per epoch from seed + epoch, cut into batches (last one smaller).
    def batches():
        epoch = 0
        while True:
            perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            for i in range(0, len(perm), batch):
                yield perm[i : i + batch]
            epoch += 1

    order = batches()
    g = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(steps):
        total = 0.0
        for _ in range(accum):
            idx = next(order)
            x = torch.stack([pixels[i] for i in idx])
            with torch.no_grad():
                latents = vae.encode(x).latent_dist.sample(generator=g) * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=g)
            if noise_offset:
                noise += noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=g)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            with torch.set_grad_enabled(train_text_encoder):
                context = text_encoder(ids[idx], return_dict=False)[0]
            if noise_scheduler.config.prediction_type == "epsilon":
                target = noise
            else:
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            pred = unet(noisy, timesteps, context, return_dict=False)[0]
            if snr_gamma is None:
                loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            else:
                snr = compute_snr(noise_scheduler, timesteps)
                w = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
                w = w / snr if noise_scheduler.config.prediction_type == "epsilon" else w / (snr + 1)
                loss = F.mse_loss(pred.float(), target.float(), reduction="none")
                loss = (loss.mean(dim=list(range(1, len(loss.shape)))) * w).mean()
            total += loss.item()
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        lr_sched.step()
        optimizer.zero_grad()
        if ema is not None:
            ema.step(unet.parameters())
        losses.append(total / accum)
    trained = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    averaged = None
    if ema is not None:
        ema.copy_to(unet.parameters())
        averaged = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    te = {k: v.detach().clone() for k, v in text_encoder.state_dict().items()} if train_text_encoder else None
    return losses, before, trained, averaged, te


def losses_of(out):
    return [json.loads(line)["loss"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def check_update(name, ours, ref, before, lr):
    """The weights agree with the reference's to 1e-4·lr (0.1 µ-units of a 1e-3 step) on all but a
    tiny fraction of elements: those where Adam's g/(|g| + ε) met a gradient within rounding noise
    of zero (see the top). Wrong hyperparameters (betas, ε, weight decay, clipping, lr schedule)
    move nearly every element by more than that."""
    diffs = torch.cat([(ours[k].double() - ref[k].double()).abs().flatten() for k in ref])
    updates = torch.cat([(ref[k].double() - before[k].double()).abs().flatten() for k in ref])
    assert float(updates.max()) > 0.5 * lr, f"{name}: the reference did not train"
    off = float((diffs > 1e-4 * lr).double().mean())
    WORST[f"{name}: fraction of weights off by > 1e-4·lr"] = max(WORST.get(f"{name}: fraction of weights off by > 1e-4·lr", 0.0), off)
    assert off <= UPDATE_OUTLIER_FRACTION, f"{name}: {off:.2e} of the weights differ by > 1e-4·lr"
    WORST[f"{name}: largest weight difference / lr"] = max(WORST.get(f"{name}: largest weight difference / lr", 0.0), float(diffs.max()) / lr)
    assert float(diffs.max()) <= 0.5 * lr, f"{name}: a weight differs by {float(diffs.max()) / lr:.2f}·lr"


CASES = {
    "epsilon-ema-accum": dict(steps=3, batch=2, accum=2, use_ema=True),
    "snr-textencoder-linear": dict(steps=3, batch=3, accum=1, use_ema=False, snr_gamma=5.0, train_text_encoder=True,
                                   text_encoder_lr=5e-5, lr_scheduler="linear", warmup=1),
    "vprediction-offset": dict(steps=2, batch=4, accum=1, use_ema=True, prediction_type="v_prediction",
                               noise_offset=0.1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_steps_match_diffusers_training_loop(case, pipeline, run_sdtune, tmp_path):
    folder, _ = pipeline("tiny")
    images, captions = make_data(tmp_path / "data")
    c = CASES[case]
    lr, seed = 1e-3, 7
    out = tmp_path / "out"
    args = ["train", "--model", folder, "--data", tmp_path / "data", "--out", out, "--resolution", R,
            "--center-crop", "--batch-size", c["batch"], "--gradient-accumulation-steps", c["accum"],
            "--max-steps", c["steps"], "--learning-rate", lr, "--seed", seed, "--quiet",
            "--lr-scheduler", c.get("lr_scheduler", "constant"), "--lr-warmup-steps", c.get("warmup", 0)]
    if c["use_ema"]:
        args.append("--use-ema")
    if c.get("snr_gamma"):
        args += ["--snr-gamma", c["snr_gamma"]]
    if c.get("prediction_type"):
        args += ["--prediction-type", c["prediction_type"]]
    if c.get("noise_offset"):
        args += ["--noise-offset", c["noise_offset"]]
    if c.get("train_text_encoder"):
        args += ["--train-text-encoder", "--text-encoder-lr", c["text_encoder_lr"]]
    run_sdtune(*args)

    ref_losses, before, trained, averaged, te = reference_run(folder, images, captions, lr=lr, seed=seed, **c)
    ours = losses_of(out)
    assert len(ours) == c["steps"]
    check(f"{case} loss step 1", torch.tensor(ours[0]), torch.tensor(ref_losses[0]), FIRST_LOSS_TOLERANCE)
    check(f"{case} losses", torch.tensor(ours), torch.tensor(ref_losses), LOSS_TOLERANCE)

    final = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    if c["use_ema"]:
        raw = load_file(out / f"checkpoint-{c['steps']}" / "training_state" / "unet.safetensors")
        check_update(f"{case} unet", raw, trained, before, lr)
        # The saved pipeline holds the EMA weights.
        check_update(f"{case} unet (EMA)", final, averaged, before, lr)
    else:
        check_update(f"{case} unet", final, trained, before, lr)
    if te is not None:
        # transformers 5 names CLIP weights without the "text_model." prefix that we write.
        canon = lambda sd: {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}
        ours_te = canon(load_file(out / "text_encoder" / "model.safetensors"))
        base_te = canon(load_file(Path(folder) / "text_encoder" / "model.safetensors"))
        te = {k: v for k, v in canon(te).items() if k in ours_te and v.is_floating_point()}
        check_update(f"{case} text encoder", ours_te, te, base_te, c["text_encoder_lr"])
