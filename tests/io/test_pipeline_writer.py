"""io::save_pipeline writes a folder that diffusers loads as a StableDiffusionPipeline: no missing
or unexpected keys, exactly the weights sdtune saved, the same image from `sdtune generate` and
from diffusers. The save is atomic: it replaces an existing folder completely, and a save that
fails midway leaves the existing folder untouched and no temporary folders behind."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from binaries import built_binary

REPO = Path(__file__).resolve().parents[2]
KINDS = ["tiny", "sd2"]


@pytest.fixture(scope="module")
def roundtrip_bin():
    return built_binary("sdtune_pipeline_roundtrip")


@pytest.fixture
def roundtrip(roundtrip_bin):
    """roundtrip(base, out, *flags, check=True) -> CompletedProcess."""

    def run(base, out, *flags, check=True):
        args = [str(roundtrip_bin), "--model", str(base), "--out", str(out), *map(str, flags)]
        proc = subprocess.run(args, capture_output=True, text=True)
        if check:
            assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        return proc

    return run


def perturbed(state, saved_keys, canonical=lambda k: k, dtype=torch.float32):
    """The driver's --perturb applied to `state` (name -> base tensor): 0.01 * sin(i + arange)
    where i is the rank of the canonical name among the saved keys, sorted."""
    rank = {k: i for i, k in enumerate(sorted(saved_keys))}
    out = {}
    for name, p in state.items():
        i = rank[canonical(name)]
        offset = torch.sin(torch.arange(p.numel(), dtype=torch.float64) + i) * 0.01
        out[name] = (p.float() + offset.to(torch.float32).reshape(p.shape)).to(dtype)
    return out


def canonical_clip(name):
    return name if name.startswith("text_model.") else "text_model." + name


def saved_keys_and_metadata(path):
    with safe_open(path, "pt") as f:
        return set(f.keys()), f.metadata(), {f.get_slice(k).get_dtype() for k in f.keys()}


def assert_clean_load(info, what):
    assert not info["missing_keys"], f"{what}: missing {info['missing_keys']}"
    assert not info["unexpected_keys"], f"{what}: unexpected {info['unexpected_keys']}"
    assert not info.get("mismatched_keys"), f"{what}: mismatched {info['mismatched_keys']}"


def assert_same_image(ours, reference):
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    diff = np.abs(ours.astype(int) - reference.astype(int))
    close = (diff <= 1).mean()
    assert close >= 0.999, f"only {close:.4%} of pixels within 1 level (max diff {diff.max()})"
    assert reference.std() > 5


def snapshot(folder):
    """{relative path: sha256} of every file (and every folder, as None) under `folder`."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return out


def leftovers(out):
    return sorted(p.name for p in out.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def private_copy(pipeline, kind, tmp_path):
    src, _ = pipeline(kind)
    dst = tmp_path / f"base_{kind}"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_tokenizer_src"))
    return dst


@pytest.mark.parametrize("kind", KINDS)
def test_saved_pipeline_loads_in_diffusers(pipeline, roundtrip, run_sdtune, tmp_path, kind):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    base, base_pipe = pipeline(kind)
    out = tmp_path / "saved"
    roundtrip(base, out, "--perturb")
    assert leftovers(out) == []

    # Layout: configs and untouched components byte for byte; new weights with format metadata.
    for rel in ["model_index.json", "unet/config.json", "text_encoder/config.json", "vae/config.json",
                "scheduler/scheduler_config.json"]:
        assert (out / rel).read_bytes() == (base / rel).read_bytes(), rel
    assert snapshot(out / "vae") == snapshot(base / "vae")
    assert snapshot(out / "tokenizer") == snapshot(base / "tokenizer")
    unet_keys, unet_meta, unet_dtypes = saved_keys_and_metadata(out / "unet" / "diffusion_pytorch_model.safetensors")
    text_keys, text_meta, text_dtypes = saved_keys_and_metadata(out / "text_encoder" / "model.safetensors")
    assert unet_meta == {"format": "pt"} and text_meta == {"format": "pt"}
    assert unet_dtypes == {"F32"} and text_dtypes == {"F32"}
    assert all(k.startswith("text_model.") for k in text_keys)
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert sorted(p.name for p in (out / "text_encoder").iterdir()) == ["config.json", "model.safetensors"]

    # Strict loads, exactly the perturbed weights.
    unet, info = UNet2DConditionModel.from_pretrained(out, subfolder="unet", output_loading_info=True)
    assert_clean_load(info, "unet")
    text_encoder, info = CLIPTextModel.from_pretrained(out / "text_encoder", output_loading_info=True)
    assert_clean_load(info, "text_encoder")

    base_unet = dict(base_pipe.unet.named_parameters())
    assert set(base_unet) == unet_keys
    expected = perturbed({k: v.detach() for k, v in base_unet.items()}, unet_keys)
    for name, p in unet.named_parameters():
        assert torch.equal(p.detach(), expected[name]), f"unet {name}"
    base_text = {k: v.detach() for k, v in base_pipe.text_encoder.named_parameters()}
    assert {canonical_clip(k) for k in base_text} == text_keys
    expected = perturbed(base_text, text_keys, canonical_clip)
    for name, p in text_encoder.named_parameters():
        assert torch.equal(p.detach(), expected[name]), f"text_encoder {name}"
    # The perturbation really changed the weights.
    some = next(iter(base_text))
    assert not torch.equal(dict(text_encoder.named_parameters())[some].detach(), base_text[some])

    # The whole pipeline loads and generates; sdtune reads the folder and generates the same image.
    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    run_sdtune("inspect", out)
    prompt, seed, steps = "a red circle on a white background", 21, 2
    image = tmp_path / "ours.png"
    run_sdtune("generate", "--model", out, "--prompt", prompt, "--width", 32, "--height", 32, "--steps", steps,
               "--seed", seed, "--out", image, "--quiet")
    with torch.no_grad():
        ref = pipe(prompt, width=32, height=32, num_inference_steps=steps, guidance_scale=7.5,
                   generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
    assert_same_image(np.asarray(Image.open(image).convert("RGB")), (ref * 255).round().astype(np.uint8))


@pytest.mark.parametrize("dtype,name,torch_dtype", [("fp16", "F16", torch.float16), ("bf16", "BF16", torch.bfloat16)])
def test_save_dtype(pipeline, roundtrip, tmp_path, dtype, name, torch_dtype):
    from diffusers import UNet2DConditionModel

    base, base_pipe = pipeline("tiny")
    out = tmp_path / "half"
    roundtrip(base, out, "--perturb", "--save-dtype", dtype)
    unet_keys, meta, dtypes = saved_keys_and_metadata(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert meta == {"format": "pt"} and dtypes == {name}
    assert saved_keys_and_metadata(out / "text_encoder" / "model.safetensors")[2] == {name}
    # The copied VAE keeps the base's dtype.
    assert saved_keys_and_metadata(out / "vae" / "diffusion_pytorch_model.safetensors")[2] == {"F32"}
    unet, info = UNet2DConditionModel.from_pretrained(out, subfolder="unet", torch_dtype=torch_dtype,
                                                      output_loading_info=True)
    assert_clean_load(info, "unet")
    expected = perturbed({k: v.detach() for k, v in base_pipe.unet.named_parameters()}, unet_keys, dtype=torch_dtype)
    for key, p in unet.named_parameters():
        assert torch.equal(p.detach(), expected[key]), key


def test_save_over_existing_folder_replaces_it(pipeline, roundtrip, tmp_path):
    base, _ = pipeline("tiny")
    out = tmp_path / "saved"
    roundtrip(base, out)
    (out / "stray.txt").write_text("left over")
    (out / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"stale")
    (out / "extra_dir").mkdir()
    roundtrip(base, out, "--perturb")
    assert not (out / "stray.txt").exists()
    assert not (out / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    assert not (out / "extra_dir").exists()
    assert leftovers(out) == []
    # The new weights (perturbed) are in place.
    with safe_open(out / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    with safe_open(base / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert any(not torch.equal(saved[k], f.get_tensor(k)) for k in f.keys())


def test_trailing_slash_names_the_folder(pipeline, roundtrip, tmp_path):
    base, _ = pipeline("tiny")
    roundtrip(base, str(tmp_path / "slash") + "/")
    assert (tmp_path / "slash" / "model_index.json").is_file()
    assert leftovers(tmp_path / "slash") == []


@pytest.mark.parametrize("damage", ["missing_tokenizer", "dangling_link_in_vae"])
def test_failed_save_leaves_existing_folder_untouched(pipeline, roundtrip, tmp_path, damage):
    """The failure comes midway, after new weights have been written: the components are written
    in model_index.json's order (scheduler, text_encoder, tokenizer, unet, vae)."""
    good = private_copy(pipeline, "tiny", tmp_path)
    out = tmp_path / "saved"
    roundtrip(good, out, "--perturb")
    (out / "mine.txt").write_text("a user's file")
    before = snapshot(out)

    broken = private_copy(pipeline, "tiny", tmp_path / "broken")
    if damage == "missing_tokenizer":
        shutil.rmtree(broken / "tokenizer")
        culprit = broken / "tokenizer"
    else:
        culprit = broken / "vae" / "notes.txt"
        culprit.symlink_to(tmp_path / "does-not-exist")
    proc = roundtrip(broken, out, check=False)
    assert proc.returncode != 0
    assert str(culprit) in proc.stderr, proc.stderr
    assert snapshot(out) == before
    assert leftovers(out) == []


def test_failed_first_save_leaves_nothing(pipeline, roundtrip, tmp_path):
    broken = private_copy(pipeline, "tiny", tmp_path)
    shutil.rmtree(broken / "tokenizer")
    out = tmp_path / "saved"
    proc = roundtrip(broken, out, check=False)
    assert proc.returncode != 0
    assert not out.exists()
    assert leftovers(out) == []
