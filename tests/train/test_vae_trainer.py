"""`sdtune train-vae`: the first step's loss is reconstruction MSE + kl_weight · mean KL computed
here with diffusers' AutoencoderKL on the same batch and draw; training on the tiny world's shapes
lowers the reconstruction error; the saved VAE's scaling_factor is 1/std of its latents, as
diffusers computes them from the saved model; diffusers loads the output pipeline."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from parity import check
from PIL import Image
from train_runs import metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "world"))
import shapes  # noqa: E402

R, SEED, KL = 64, 3, 1e-2


def pixels(folder, rows):
    return torch.stack([torch.from_numpy(np.array(Image.open(folder / r["file_name"]))).permute(2, 0, 1).float()
                        / 127.5 - 1 for r in rows])


def vae_args(model, data, out, *extra):
    return ["train-vae", "--model", model, "--data", data, "--out", out, "--resolution", R, "--center-crop",
            "--batch-size", 4, "--learning-rate", 2e-3, "--kl-weight", KL, "--seed", SEED, "--log-every", 1,
            "--quiet", *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae_shapes")
    return folder, shapes.write_dataset(folder, 24, seed=0)


def test_first_step_loss_is_the_formula(pipeline, run_sdtune, tmp_path, world):
    from diffusers import AutoencoderKL

    model, _ = pipeline("tiny")
    folder, rows = world
    run_sdtune(*vae_args(model, folder, tmp_path / "out", "--max-steps", 1))
    ours = metrics(tmp_path / "out")[0]
    # The batch of step 1: the first 4 of the epoch-0 permutation (seed), and its sample drawn
    # from a generator seeded seed + 1.
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(SEED)).tolist()
    x = pixels(folder, [rows[i] for i in perm[:4]])
    vae = AutoencoderKL.from_pretrained(Path(model) / "vae")
    with torch.no_grad():
        q = vae.encode(x).latent_dist
        z = q.sample(generator=torch.Generator().manual_seed(SEED + 1))
        mse = (vae.decode(z).sample - x).square().mean()
        kl = 0.5 * (q.mean.square() + q.var - 1 - q.logvar).mean()
    check("train-vae reconstruction step 1", torch.tensor(ours["reconstruction"]), mse, 1e-5)
    check("train-vae kl step 1", torch.tensor(ours["kl"]), kl, 1e-5)
    check("train-vae loss step 1", torch.tensor(ours["loss"]), mse + KL * kl, 1e-5)


def test_training_reconstructs_and_sets_the_scaling_factor(pipeline, run_sdtune, tmp_path, world):
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    model, _ = pipeline("tiny")
    folder, rows = world
    proc = run_sdtune(*vae_args(model, folder, tmp_path / "out", "--max-steps", 60))
    log = metrics(tmp_path / "out")
    first, last = log[0]["reconstruction"], np.mean([r["reconstruction"] for r in log[-5:]])
    print(f"train-vae: reconstruction MSE {first:.4f} -> {last:.4f}")
    assert last < 0.5 * first, proc.stdout
    config = json.loads((tmp_path / "out" / "vae" / "config.json").read_text())
    assert f"scaling factor: {config['scaling_factor']:.6f}" in proc.stdout
    # diffusers' view of the saved VAE: its latents of the same 24 images have std 1/scaling_factor
    # (up to the sampling noise of the two independent draws).
    vae = AutoencoderKL.from_pretrained(tmp_path / "out" / "vae")
    with torch.no_grad():
        z = vae.encode(pixels(folder, rows)).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    assert config["scaling_factor"] == pytest.approx(1 / z.std().item(), rel=0.05)
    assert config["scaling_factor"] != pytest.approx(0.18215, rel=0.05)
    # The rest of the pipeline is the base's, and diffusers loads the whole.
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "out", safety_checker=None,
                                                   requires_safety_checker=False)
    assert pipe.vae.config.scaling_factor == config["scaling_factor"]
    assert (tmp_path / "out" / "logs" / "reconstructions.png").is_file()


def test_bad_vae_options(pipeline, run_sdtune, tmp_path, world):
    model, _ = pipeline("tiny")
    folder, _ = world
    (tmp_path / "empty").mkdir()
    for args, message in [
        (vae_args(model, folder, tmp_path / "o1", "--kl-weight", -1), "--kl-weight: must be >= 0, got -1"),
        (vae_args(model, folder, tmp_path / "o2", "--resolution", 60), "--resolution must be a positive multiple of 8"),
        (vae_args(model, tmp_path / "empty", tmp_path / "o3"), str(tmp_path / "empty")),
    ]:
        proc = run_sdtune(*args, check=False)
        assert proc.returncode == 1, proc.stderr
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
