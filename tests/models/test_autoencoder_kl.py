"""AutoencoderKL parity: encoder moments (mean, logvar) and decoder output against diffusers."""

import pytest
import torch
from parity import check

CASES = [("tiny", 2, 32, 32), ("tiny", 1, 24, 40), ("sd2", 1, 32, 48), ("sd15", 1, 64, 64), ("sd15", 1, 48, 64),
         # SDXL's VAE config (scaling_factor 0.13025, force_upcast) on SD's architecture
         ("sdxl", 1, 24, 40)]


@pytest.mark.parametrize("kind,batch,H,W", CASES)
def test_vae_encode_matches_diffusers(pipeline, forward, kind, batch, H, W):
    folder, pipe = pipeline(kind)
    g = torch.Generator().manual_seed(H + W)
    image = torch.rand(batch, 3, H, W, generator=g) * 2 - 1
    with torch.no_grad():
        dist = pipe.vae.encode(image).latent_dist
    out = forward(folder, "vae-encoder", sample=image)
    check(f"vae-encoder.mean[{kind}]", out["mean"], dist.mean)
    check(f"vae-encoder.logvar[{kind}]", out["logvar"], dist.logvar)


@pytest.mark.parametrize("kind,batch,H,W", CASES)
def test_vae_decode_matches_diffusers(pipeline, forward, kind, batch, H, W):
    folder, pipe = pipeline(kind)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    g = torch.Generator().manual_seed(H * W)
    # What the pipeline passes to vae.decode: latents / scaling_factor.
    latents = torch.randn(batch, 4, H // factor, W // factor, generator=g) / pipe.vae.config.scaling_factor
    with torch.no_grad():
        reference = pipe.vae.decode(latents).sample
    check(f"vae-decoder[{kind}]", forward(folder, "vae-decoder", latents=latents)["sample"], reference)


@pytest.mark.parametrize("seed", [0, 1234])
def test_vae_posterior_sample_matches_diffusers_generator(pipeline, forward, seed):
    """A draw from the posterior with a seeded CPU generator equals diffusers'
    latent_dist.sample(generator=torch.Generator("cpu").manual_seed(seed))."""
    folder, pipe = pipeline("tiny")
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        reference = pipe.vae.encode(image).latent_dist.sample(generator=torch.Generator("cpu").manual_seed(seed))
    out = forward(folder, "vae-encoder", "--seed", seed, sample=image)
    check("vae-encoder.sample[tiny]", out["latents"], reference)
    # Different seeds must give different draws (the seed is really used).
    other = forward(folder, "vae-encoder", "--seed", seed + 1, sample=image)["latents"]
    assert not torch.allclose(other, out["latents"])
