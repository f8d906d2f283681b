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
