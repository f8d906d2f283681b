"""One UNet training step against diffusers: sdtune_train_step computes the loss of
examples/text_to_image/train_text_to_image.py (epsilon / v_prediction targets, optional min-SNR-γ
weighting) and backpropagates; the loss and every parameter's gradient must match diffusers'
UNet2DConditionModel in train mode on the same weights and inputs. Gradient checkpointing must
not change the gradients."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parity import check
from safetensors.torch import load_file, save_file
from binaries import built_binary

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4  # max|ours - ref| / max|ref| per tensor, fp32 on CPU
# Checkpointing recomputes the same float ops, but the gradient reaching a tensor that has three
# or more uses (a resnet input: norm1, the residual, a skip connection) is summed in another
# association ((a + b) + c inside the recomputed graph instead of (a + c) + b), so it is not
# bitwise: up and mid blocks come out identical, the down path within ~1.1e-6 (a few float32 ulps).
CHECKPOINT_TOLERANCE = 1e-5

# (kind, prediction type, snr_gamma, latent size): each pipeline's own prediction type.
CASES = [
    ("tiny", "epsilon", None, 16),
    ("tiny", "epsilon", 5.0, 16),
    ("sd2", "v_prediction", None, 12),
    ("sd2", "v_prediction", 5.0, 12),
]


@pytest.fixture(scope="module")
def train_step_bin():
    return built_binary("sdtune_train_step")


def make_inputs(unet_config, size, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "latents": torch.randn(2, unet_config["in_channels"], size, size, generator=g),
        "noise": torch.randn(2, unet_config["in_channels"], size, size, generator=g),
        # One low-noise and one high-noise step: min(SNR, 5) clips only the first.
        "timesteps": torch.tensor([37, 912], dtype=torch.int64),
        "encoder_hidden_states": torch.randn(2, 77, unet_config["cross_attention_dim"], generator=g),
    }


def run_driver(binary, folder, inputs, tmp_path, *extra):
    inp, out = tmp_path / "in.safetensors", tmp_path / f"out{len(list(tmp_path.iterdir()))}.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, inp)
    args = [str(binary), "--model", str(folder), "--inputs", str(inp), "--out", str(out), *map(str, extra)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return load_file(out)


def reference_step(folder, inputs, prediction_type, snr_gamma):
    """The loss and gradients of train_text_to_image.py's training step (its code, verbatim where
    it matters)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import compute_snr

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    unet.train()
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    noise_scheduler.register_to_config(prediction_type=prediction_type)
    latents, noise, timesteps = inputs["latents"], inputs["noise"], inputs["timesteps"]

    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    elif noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    model_pred = unet(noisy_latents, timesteps, inputs["encoder_hidden_states"], return_dict=False)[0]

    if snr_gamma is None:
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    else:
        snr = compute_snr(noise_scheduler, timesteps)
        mse_loss_weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
        if noise_scheduler.config.prediction_type == "epsilon":
            mse_loss_weights = mse_loss_weights / snr
        elif noise_scheduler.config.prediction_type == "v_prediction":
            mse_loss_weights = mse_loss_weights / (snr + 1)
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
        loss = loss.mean(dim=list(range(1, len(loss.shape)))) * mse_loss_weights
        loss = loss.mean()
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in unet.named_parameters()}


@pytest.mark.parametrize("kind,prediction_type,snr_gamma,size", CASES)
def test_train_step_matches_diffusers(pipeline, train_step_bin, tmp_path, kind, prediction_type, snr_gamma, size):
    folder, pipe = pipeline(kind)
    inputs = make_inputs(pipe.unet.config, size, seed=size)
    extra = ["--prediction-type", prediction_type]
    if snr_gamma is not None:
        extra += ["--snr-gamma", snr_gamma]
    ours = run_driver(train_step_bin, folder, inputs, tmp_path, *extra)
    ref_loss, ref_grads = reference_step(folder, inputs, prediction_type, snr_gamma)

    case = kind if snr_gamma is None else f"{kind},min-snr"
    check(f"train.loss[{case}]", ours["loss"], ref_loss, TOLERANCE)
    assert {k[len("grad."):] for k in ours if k.startswith("grad.")} == set(ref_grads)
    for name, ref in ref_grads.items():
        assert ref is not None and ref.abs().max() > 0, f"{name}: no reference gradient"
        check(f"train.grad[{case}]", ours[f"grad.{name}"], ref, TOLERANCE)


@pytest.mark.parametrize("kind,prediction_type,snr_gamma,size", [CASES[1], CASES[3]])
def test_gradient_checkpointing_same_gradients(pipeline, train_step_bin, tmp_path, kind, prediction_type, snr_gamma, size):
    folder, pipe = pipeline(kind)
    inputs = make_inputs(pipe.unet.config, size, seed=size)
    extra = ["--prediction-type", prediction_type, "--snr-gamma", snr_gamma]
    plain = run_driver(train_step_bin, folder, inputs, tmp_path, *extra)
    checkpointed = run_driver(train_step_bin, folder, inputs, tmp_path, *extra, "--gradient-checkpointing")
    assert set(plain) == set(checkpointed)
    for name in plain:
        check(f"train.checkpointing[{kind}]", checkpointed[name], plain[name], CHECKPOINT_TOLERANCE)


def sdxl_inputs(unet_config, size, seed):
    """make_inputs plus SDXL's pooled text vector and per-image time ids (two different images:
    their own source sizes and crops, as a batch of random crops has)."""
    g = torch.Generator().manual_seed(seed + 1)
    text_dim = unet_config["projection_class_embeddings_input_dim"] - 6 * unet_config["addition_time_embed_dim"]
    return {
        **make_inputs(unet_config, size, seed),
        "text_embeds": torch.randn(2, text_dim, generator=g),
        "time_ids": torch.tensor([[1024.0, 768.0, 0.0, 128.0, 512.0, 512.0], [600.0, 900.0, 44.0, 7.0, 512.0, 512.0]]),
    }


def reference_sdxl_step(folder, inputs, snr_gamma):
    """train_text_to_image_sdxl.py's step on the same batch: the UNet gets the pooled vector and
    the time ids as added_cond_kwargs; epsilon target; MSE, optionally min-SNR-γ weighted."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import compute_snr

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    unet.train()
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    model_input, noise, timesteps = inputs["latents"], inputs["noise"], inputs["timesteps"]
    noisy_model_input = noise_scheduler.add_noise(model_input, noise, timesteps)
    unet_added_conditions = {"time_ids": inputs["time_ids"], "text_embeds": inputs["text_embeds"]}
    model_pred = unet(noisy_model_input, timesteps, inputs["encoder_hidden_states"],
                      added_cond_kwargs=unet_added_conditions).sample
    assert noise_scheduler.config.prediction_type == "epsilon"
    target = noise
    if snr_gamma is None:
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    else:
        snr = compute_snr(noise_scheduler, timesteps)
        mse_loss_weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
        loss = loss.mean(dim=list(range(1, len(loss.shape)))) * mse_loss_weights
        loss = loss.mean()
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in unet.named_parameters()}


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_sdxl_train_step_matches_diffusers(pipeline, train_step_bin, tmp_path, snr_gamma):
    """The issue's bound: loss and every gradient within 1e-5 of diffusers' SDXL recipe, the
    added-conditioning weights (add_embedding) included."""
    folder, pipe = pipeline("sdxl")
    inputs = sdxl_inputs(pipe.unet.config, 8, seed=3)
    extra = [] if snr_gamma is None else ["--snr-gamma", snr_gamma]
    ours = run_driver(train_step_bin, folder, inputs, tmp_path, *extra)
    ref_loss, ref_grads = reference_sdxl_step(folder, inputs, snr_gamma)
    case = "sdxl" if snr_gamma is None else "sdxl,min-snr"
    check(f"train.loss[{case}]", ours["loss"], ref_loss, 1e-5)
    assert {k[len("grad."):] for k in ours if k.startswith("grad.")} == set(ref_grads)
    assert any(name.startswith("add_embedding.") for name in ref_grads)
    for name, ref in ref_grads.items():
        assert ref is not None and ref.abs().max() > 0, f"{name}: no reference gradient"
        check(f"train.grad[{case}]", ours[f"grad.{name}"], ref, 1e-5)


def test_sdxl_gradient_checkpointing_same_gradients(pipeline, train_step_bin, tmp_path):
    folder, pipe = pipeline("sdxl")
    inputs = sdxl_inputs(pipe.unet.config, 8, seed=4)
    plain = run_driver(train_step_bin, folder, inputs, tmp_path)
    checkpointed = run_driver(train_step_bin, folder, inputs, tmp_path, "--gradient-checkpointing")
    assert set(plain) == set(checkpointed)
    for name in plain:
        check("train.checkpointing[sdxl]", checkpointed[name], plain[name], CHECKPOINT_TOLERANCE)
