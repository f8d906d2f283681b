"""diffusers' train_text_to_image.py, run here as the reference for `sdtune train`, and the measure
by which two trainings agree.

The reference runs with diffusers' models, torch's fused AdamW, clip_grad_norm_, LambdaLR and
diffusers' EMAModel, drawing the same random numbers in the same order as the trainer (its streams
are plain CPU generators: data order from seed + epoch; the VAE posterior sample, noise and
timesteps from seed + 1).

It runs in float32, as sdtune does, or in float64: the same training without rounding noise worth
the name (the "exact" run). Every random number is drawn in float32 and then cast, so that both
runs consume the generator identically and see the same draws.

Why an exact run: weights after a few AdamW steps cannot agree between two float32 implementations
to a fixed tolerance on every element. Adam's first update is ≈ lr·sign(g), and later ones divide
the first moment by the root of the second: an element whose gradient is within rounding noise of
zero, or whose gradients over the steps nearly cancel, moves by up to ~2·lr on a rounding error.
How many such elements there are depends on the gradients near zero and on the kernels' rounding
(their blocking differs between AVX-512, AVX2 and the generic ISA, and between CPU vendors), so
no fixed share of them is right on every CPU. What is the same everywhere is the comparison: sdtune
must be as close to the exact training as torch's own float32 run of diffusers is.
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from parity import WORST
from train_runs import random_images

R = 32  # the tiny VAE halves it: 16×16 latents, the tiny UNet's sample_size
CAPTIONS = ["a red square", "a green circle", "", "two blue triangles on a white background"]

# Differences are measured in float32 ulps of the exact weight: the spacing of float32 numbers
# there, so that 1 is what storing the result alone may cost. Rounding inside the computation
# (≈1e-6 relative in the gradients here), passed through AdamW's m̂/(√v̂ + ε), moves the bulk of the
# elements by a few ulps, and the near-singular few (see the top) by more. Which and how many are
# near-singular depends on the trajectory, so the bulk is judged by quantiles, and these are held
# to torch's own float32 run of the same reference, computed on the same kernels in the same run:
QUANTILES = (0.5, 0.9)
# sdtune's quantiles may be at most this multiple of torch's, plus 1 ulp. Its single step rounds as
# torch's does (gradients' error against float64: 1.00× torch's on the tiny UNet), but after three
# AdamW steps the two trajectories' quantiles differ by 0.52–1.66× (measured: AVX2, generic ISA):
# 3 covers that twice. A real defect moves the bulk by far more: weight decay dropped, 100×.
BULK_FACTOR = 3.0
# Per tensor, the median element may be off by at most this many lr. A tensor that the optimizer
# skipped, or stepped with another lr, is off by ~lr in nearly every element, however small it is
# (the quantiles above would not see a 320-element bias). Rounding can move a single element by up
# to ~2·lr (a first-step gradient within rounding of zero: its sign decides ±lr), so no bound on
# the largest element holds on every CPU; it never moves most of a tensor.
TENSOR_MEDIAN_OFF = 0.5


def make_data(folder, captions=CAPTIONS, size=R):
    """Random size×size images with captions in folder/metadata.jsonl; returns (pixels, captions).
    Images at the training resolution make resizing and cropping the identity on both sides
    (torchvision's bilinear Resize and our Lanczos are different filters by design)."""
    images = random_images(folder, len(captions), seed=0, size=size)
    rows = [{"file_name": f"{i}.png", "text": caption} for i, caption in enumerate(captions)]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # The trainer sorts by path: 0.png … 3.png (fewer than 10 images).
    return images, list(captions)


def reference_run(folder, images, captions, *, steps, batch, accum, lr, seed, use_ema, snr_gamma=None,
                  prediction_type=None, noise_offset=0.0, train_text_encoder=False, text_encoder_lr=None,
                  lr_scheduler="constant", warmup=0, max_grad_norm=1.0, dtype=torch.float32, sdxl_time_ids=None):
    """Returns (losses, UNet weights before, trained UNet, EMA UNet or None, text encoder or None).

    With `sdxl_time_ids` (one row of six per image) the folder is an SDXL pipeline, trained as
    train_text_to_image_sdxl.py does: the context is both encoders' penultimate hidden states side
    by side, and the UNet also gets the second encoder's pooled projection and the image's time ids.
    `images` are then the training crops themselves. With `train_text_encoder` both encoders train,
    the second's parameters after the first's in one group (kohya's sdxl_train.py), and the last
    value returned is the pair of their weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, compute_snr
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").to(dtype)
    vae = AutoencoderKL.from_pretrained(folder / "vae").to(dtype)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(dtype)
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    if prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=prediction_type)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(train_text_encoder)
    unet.train()
    text_encoder.train(train_text_encoder)
    before = {k: v.detach().clone() for k, v in unet.state_dict().items()}

    if sdxl_time_ids is not None:
        from transformers import CLIPTextModelWithProjection

        tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").to(dtype)
        text_encoder_2.requires_grad_(train_text_encoder)
        text_encoder_2.train(train_text_encoder)

    groups = [{"params": list(unet.parameters()), "lr": lr}]
    params = list(unet.parameters())
    if train_text_encoder:
        encoders = list(text_encoder.parameters())
        if sdxl_time_ids is not None:
            encoders += list(text_encoder_2.parameters())
        groups.append({"params": encoders, "lr": text_encoder_lr or lr})
        params += encoders
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8, fused=True)
    lr_sched = get_scheduler(lr_scheduler, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    ema = EMAModel(unet.parameters()) if use_ema else None

    pixels = [torch.from_numpy(im).permute(2, 0, 1).float().div(127.5).sub(1).to(dtype) for im in images]
    ids = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids
    if sdxl_time_ids is not None:
        ids_2 = tokenizer_2(captions, max_length=tokenizer_2.model_max_length, padding="max_length",
                            truncation=True, return_tensors="pt").input_ids
        all_time_ids = torch.tensor(sdxl_time_ids, dtype=torch.float32).to(dtype)

    def condition(idx):
        """The UNet's context (and SDXL's added conditions) for the examples idx."""
        with torch.set_grad_enabled(train_text_encoder):
            if sdxl_time_ids is None:
                return text_encoder(ids[idx], return_dict=False)[0], None
            one = text_encoder(ids[idx], output_hidden_states=True)
            two = text_encoder_2(ids_2[idx], output_hidden_states=True)
            context = torch.cat([one.hidden_states[-2], two.hidden_states[-2]], dim=-1)
            return context, {"text_embeds": two.text_embeds, "time_ids": all_time_ids[idx]}

    def randn(shape):  # float32 draws, whatever the run's dtype (see the top)
        return torch.randn(shape, generator=g).to(dtype)

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
                # DiagonalGaussianDistribution.sample(generator=g), with a float32 draw.
                dist = vae.encode(x).latent_dist
                latents = (dist.mean + dist.std * randn(dist.mean.shape)) * vae.config.scaling_factor
            noise = randn(latents.shape)
            if noise_offset:
                noise += noise_offset * randn((latents.shape[0], latents.shape[1], 1, 1))
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            context, added = condition(idx)
            if noise_scheduler.config.prediction_type == "epsilon":
                target = noise
            else:
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            pred = unet(noisy, timesteps, context, added_cond_kwargs=added, return_dict=False)[0]
            # The script's .float() upcasts half precision; here the run's own dtype is the upcast.
            if snr_gamma is None:
                loss = F.mse_loss(pred.to(dtype), target.to(dtype), reduction="mean")
            else:
                snr = compute_snr(noise_scheduler, timesteps)
                w = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
                w = w / snr if noise_scheduler.config.prediction_type == "epsilon" else w / (snr + 1)
                loss = F.mse_loss(pred.to(dtype), target.to(dtype), reduction="none")
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
    if te is not None and sdxl_time_ids is not None:
        te = (te, {k: v.detach().clone() for k, v in text_encoder_2.state_dict().items()})
    return losses, before, trained, averaged, te


def _ulps(weights, exact, keys):
    """|weights − exact| in float32 ulps of the exact weights, flattened."""
    parts = []
    for k in keys:
        e = exact[k].float().abs()
        ulp = (torch.nextafter(e, torch.full_like(e, float("inf"))) - e).double()
        parts.append(((weights[k].double() - exact[k].double()).abs() / ulp).flatten())
    return torch.cat(parts)


def _quantile(values, q):
    return float(values.sort().values[round(q * (values.numel() - 1))])


def _record(key, value):
    WORST[key] = max(WORST.get(key, 0.0), value)


def check_update(name, ours, ref, exact, before, lr):
    """sdtune's trained weights `ours` against the exact (float64) run of the reference, measured
    by the yardstick of torch's float32 run `ref` of that same reference (see the top): each of
    QUANTILES of the differences in ulps at most BULK_FACTOR× torch's + 1, and each tensor's median
    difference at most TENSOR_MEDIAN_OFF·lr."""
    keys = [k for k in exact if exact[k].is_floating_point()]
    updates = torch.cat([(exact[k].double() - before[k].double()).abs().flatten() for k in keys])
    assert float(updates.max()) > 0.5 * lr, f"{name}: the reference did not train"
    d_ours, d_ref = _ulps(ours, exact, keys), _ulps(ref, exact, keys)
    for q in QUANTILES:
        a, b = _quantile(d_ours, q), _quantile(d_ref, q)
        _record(f"{name}: {q:.0%} quantile of |diff| in ulps, sdtune", a)
        _record(f"{name}: {q:.0%} quantile of |diff| in ulps, torch fp32", b)
        assert a <= BULK_FACTOR * b + 1, (f"{name}: {q:.0%} of the weights are within {a:.3g} ulps of the exact run, "
                                          f"torch's float32 run within {b:.3g}: more than rounding")
    for k in keys:
        diff = (ours[k].double() - exact[k].double()).abs().flatten()
        median = _quantile(diff, 0.5) / lr
        _record(f"{name}: largest tensor median |diff| / lr, sdtune", median)
        assert median <= TENSOR_MEDIAN_OFF, f"{name}: {k} differs from the exact run by {median:.2f}·lr (median)"
    for who, weights in (("sdtune", ours), ("torch fp32", ref)):  # for the record: not bounded (see above)
        largest = max(float((weights[k].double() - exact[k].double()).abs().max()) for k in keys) / lr
        _record(f"{name}: largest |diff| / lr, {who}", largest)
