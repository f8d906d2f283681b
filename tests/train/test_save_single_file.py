"""`train --save-single-file`: next to the diffusers folder, OUT/model.safetensors and one per
checkpoint in the A1111/ComfyUI layout, the same weights as the folder beside it (diffusers'
from_single_file reads them equal); a LoRA run is refused up front."""

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image


def dataset(folder, n=3):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "text": f"caption {i}"}) + "\n" for i in range(n)))
    return folder


def train(sdtune_bin, model, data, out, *extra):
    return subprocess.run([str(sdtune_bin), "train", "--model", str(model), "--data", str(data), "--out", str(out),
                           "--resolution", "32", "--max-steps", "2", "--checkpointing-steps", "1", "--quiet",
                           *map(str, extra)], capture_output=True, text=True, timeout=600)


def assert_same(a, b, names=("unet", "vae", "text_encoder")):
    for name in names:
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        keys = [k for k in sb if not k.endswith("position_ids")]
        assert all(torch.equal(sa[k], sb[k]) for k in keys), name


def test_the_model_and_each_checkpoint_as_one_file(pipeline, sdtune_bin, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "out"
    proc = train(sdtune_bin, pipeline("tiny")[0], dataset(tmp_path / "data"), out, "--save-single-file", "--use-ema")
    assert proc.returncode == 0, proc.stderr
    assert f"single file: {out / 'model.safetensors'}" in proc.stdout
    for folder in (out, out / "checkpoint-1", out / "checkpoint-2"):
        one = folder / "model.safetensors"
        theirs = StableDiffusionPipeline.from_single_file(str(one), config=str(folder), local_files_only=True,
                                                          safety_checker=None, requires_safety_checker=False)
        assert_same(theirs, StableDiffusionPipeline.from_pretrained(folder))
    # The file holds the trained weights (EMA's, as the folder), not the base model's.
    base = StableDiffusionPipeline.from_pretrained(pipeline("tiny")[0])
    ours = StableDiffusionPipeline.from_pretrained(out)
    assert not torch.equal(base.unet.conv_in.weight, ours.unet.conv_in.weight)


def test_an_sdxl_model_as_one_file(pipeline, sdtune_bin, tmp_path):
    """SDXL's layout (both text encoders under conditioner.embedders.*), read by diffusers' own
    StableDiffusionXLPipeline.from_single_file as the folder written beside it."""
    from diffusers import StableDiffusionXLPipeline

    out = tmp_path / "out"
    proc = train(sdtune_bin, pipeline("sdxl")[0], dataset(tmp_path / "data"), out, "--save-single-file")
    assert proc.returncode == 0, proc.stderr
    for folder in (out, out / "checkpoint-2"):
        theirs = StableDiffusionXLPipeline.from_single_file(str(folder / "model.safetensors"), config=str(folder),
                                                            local_files_only=True)
        assert_same(theirs, StableDiffusionXLPipeline.from_pretrained(folder),
                    ("unet", "vae", "text_encoder", "text_encoder_2"))


def test_refused_for_lora_before_training(pipeline, sdtune_bin, tmp_path):
    proc = train(sdtune_bin, pipeline("tiny")[0], dataset(tmp_path / "data"), tmp_path / "out", "--save-single-file",
                 "--lora-rank", 4)
    assert proc.returncode == 1 and "is for full fine-tuning" in proc.stderr, proc.stderr
    assert not list((tmp_path / "out").glob("checkpoint-*"))
