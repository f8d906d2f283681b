"""UNet2DConditionModel parity: sdtune forward against diffusers on the same weights and inputs."""

import pytest
import torch
from parity import check

# (kind, batch, latent height, latent width, timesteps): non-square sizes, and sizes that are not
# multiples of the UNet's total downsampling (explicit upsample sizes in the up path).
CASES = [
    ("tiny", 2, 16, 16, [1, 999]),
    ("tiny", 1, 8, 12, [500]),
    ("tiny", 1, 9, 7, [250]),
    ("sd2", 2, 12, 20, [10, 600]),
    ("sd2", 1, 10, 14, [999]),
    ("sd15", 1, 8, 8, [981]),
    ("sd15", 1, 8, 16, [1]),
]


@pytest.mark.parametrize("kind,batch,h,w,timesteps", CASES)
def test_unet_matches_diffusers(pipeline, forward, kind, batch, h, w, timesteps):
    folder, pipe = pipeline(kind)
    g = torch.Generator().manual_seed(h * 100 + w)
    unet = pipe.unet
    sample = torch.randn(batch, unet.config.in_channels, h, w, generator=g)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor(timesteps * (batch // len(timesteps)), dtype=torch.int64)
    with torch.no_grad():
        reference = unet(sample, t, encoder_hidden_states=context).sample
    ours = forward(folder, "unet", sample=sample, timestep=t, encoder_hidden_states=context)["sample"]
    check(f"unet[{kind}]", ours, reference)


def test_unet_float_timestep(pipeline, forward):
    folder, pipe = pipeline("tiny")
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, 32, generator=g)
    t = torch.tensor([412.5])
    with torch.no_grad():
        reference = pipe.unet(sample, t, encoder_hidden_states=context).sample
    check("unet[tiny]", forward(folder, "unet", sample=sample, timestep=t, encoder_hidden_states=context)["sample"], reference)


def _sdxl_inputs(unet, batch, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, unet.config.in_channels, h, w, generator=g)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    text_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    text_embeds = torch.randn(batch, text_dim, generator=g)
    # original size, crop top-left, target size: distinct per row, as a batch of mixed crops has.
    time_ids = torch.tensor([[1024.0, 768.0, 0.0, 64.0, 1024.0, 1024.0], [512.0, 512.0, 12.0, 0.0, 768.0, 1344.0]])[:batch]
    return sample, context, text_embeds, time_ids


@pytest.mark.parametrize("batch,h,w,timesteps", [(2, 16, 16, [1, 999]), (1, 12, 20, [500])])
def test_sdxl_unet_matches_diffusers(pipeline, forward, batch, h, w, timesteps):
    """SDXL's text_time conditioning: the pooled text embedding and the size/crop ids, embedded
    and added to the time embedding, with transformer depths that differ per level."""
    folder, pipe = pipeline("sdxl")
    unet = pipe.unet
    sample, context, text_embeds, time_ids = _sdxl_inputs(unet, batch, h, w, seed=h * 10 + w)
    t = torch.tensor(timesteps * (batch // len(timesteps)), dtype=torch.int64)
    with torch.no_grad():
        reference = unet(sample, t, encoder_hidden_states=context,
                         added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
        # The added conditioning must matter, or this test could not tell it was dropped.
        other = unet(sample, t, encoder_hidden_states=context,
                     added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids.flip(-1)}).sample
    assert (reference - other).abs().max() > 1e-3
    ours = forward(folder, "unet", sample=sample, timestep=t, encoder_hidden_states=context,
                   text_embeds=text_embeds, time_ids=time_ids)["sample"]
    check("unet[sdxl]", ours, reference)


def test_sdxl_unet_needs_added_conditions(pipeline, run_sdtune, one_line_error, tmp_path):
    """An SDXL UNet run without text_embeds/time_ids, or with too few time ids, is a one-line
    error, not a crash or a silently unconditioned prediction."""
    from safetensors.torch import save_file

    folder, pipe = pipeline("sdxl")
    sample, context, text_embeds, time_ids = _sdxl_inputs(pipe.unet, 1, 8, 8, seed=3)
    base = dict(sample=sample, timestep=torch.tensor([10]), encoder_hidden_states=context)
    for name, extra, needles in [
        ("missing", {}, ["text_embeds and time_ids"]),
        ("short", dict(text_embeds=text_embeds, time_ids=time_ids[:, :4]), ["projection_class_embeddings_input_dim"]),
    ]:
        inputs = tmp_path / f"{name}.safetensors"
        save_file({**base, **extra}, inputs)
        proc = run_sdtune("forward", "--model", folder, "--component", "unet", "--inputs", inputs,
                          "--out", tmp_path / "out.safetensors", check=False)
        one_line_error(proc, *needles)
