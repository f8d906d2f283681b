"""`sdtune inspect DIR`: every component of model_index.json is listed, and the parameter counts and
dtypes read from the safetensors headers agree with the diffusers / transformers modules. Also the
weight layouts inspect must find: an fp16-only variant and a sharded checkpoint."""

import json
import re

import pytest
import torch
from parity import check
from safetensors.torch import load_file, save_file

COMPONENT_LINE = re.compile(r"^  (\w+): (\w+)\.(\w+)$")
WEIGHTS_LINE = re.compile(
    r"^    weights: (\d+) file\(s\), (\d+) tensors, \S+ parameters \((\d+)\), [\d.]+ MB, dtypes: (.*)$"
)


def parse_inspect(stdout):
    """{component: {"library", "class", and for weighted ones "files", "tensors", "params",
    "dtypes" (the set of dtype names)}}."""
    out, current = {}, None
    for line in stdout.splitlines():
        if m := COMPONENT_LINE.match(line):
            current = out[m[1]] = {"library": m[2], "class": m[3]}
        elif m := WEIGHTS_LINE.match(line):
            assert current is not None, line
            current.update(
                files=int(m[1]), tensors=int(m[2]), params=int(m[3]),
                dtypes={d.split()[0] for d in m[4].split(", ")},
            )
    return out


def declared_components(folder):
    index = json.loads((folder / "model_index.json").read_text())
    return {
        k: tuple(v) for k, v in index.items()
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
    }


def numel(module):
    return sum(p.numel() for p in module.parameters())


def inspect(run_sdtune, folder):
    proc = run_sdtune("inspect", folder)
    assert proc.stderr == "", proc.stderr
    return proc.stdout, parse_inspect(proc.stdout)


@pytest.mark.parametrize("kind", ["tiny", "sd2"])
def test_inspect_counts_match_diffusers(run_sdtune, pipeline, kind):
    folder, pipe = pipeline(kind)
    stdout, shown = inspect(run_sdtune, folder)
    assert stdout.splitlines()[0] == str(folder)
    assert "pipeline: StableDiffusionPipeline" in stdout

    declared = declared_components(folder)
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(declared)
    assert set(shown) == set(declared), stdout
    for name, (library, cls) in declared.items():
        assert (shown[name]["library"], shown[name]["class"]) == (library, cls), stdout

    for name, module in [("unet", pipe.unet), ("vae", pipe.vae), ("text_encoder", pipe.text_encoder)]:
        info = shown[name]
        assert info["params"] == numel(module), f"{name}: {info['params']} != {numel(module)}"
        assert info["files"] == 1 and info["dtypes"] == {"F32"}, (name, info)
        assert info["tensors"] == len(load_file(folder / name / next(
            p.name for p in (folder / name).iterdir() if p.suffix == ".safetensors")))
    assert "vocab: 49408 tokens, max length 77" in stdout
    assert f"family: {'SD 2.x' if kind == 'sd2' else 'SD 1.x'}" in stdout


def test_inspect_sdxl(run_sdtune, pipeline):
    """An SDXL folder: named as SDXL, and both text encoders and tokenizers are shown, their counts
    equal to the transformers modules'."""
    folder, pipe = pipeline("sdxl")
    stdout, shown = inspect(run_sdtune, folder)
    assert "pipeline: StableDiffusionXLPipeline" in stdout and "family: SDXL" in stdout
    assert set(shown) == set(declared_components(folder)), stdout
    for name in ["unet", "vae", "text_encoder", "text_encoder_2"]:
        assert shown[name]["params"] == numel(getattr(pipe, name)), (name, stdout)
    assert shown["text_encoder_2"]["class"] == "CLIPTextModelWithProjection"
    assert stdout.count("vocab: 49408 tokens, max length 77") == 2
    assert '"addition_embed_type"' not in stdout and 'addition_embed_type="text_time"' in stdout
    assert "force_upcast=true" in stdout and "projection_dim=24" in stdout


def test_inspect_fp16_variant_only(run_sdtune, pipeline, copy_pipeline, tmp_path):
    """A unet saved only as diffusion_pytorch_model.fp16.safetensors is found, reported as F16,
    and runs (weights converted to the fp32 model) like diffusers on the same rounded weights."""
    _, pipe = pipeline("tiny")
    folder = copy_pipeline()
    fp32 = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(fp32)
    save_file({k: v.half() for k, v in weights.items()}, folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    fp32.unlink()

    _, shown = inspect(run_sdtune, folder)
    assert shown["unet"]["dtypes"] == {"F16"}, shown["unet"]
    assert shown["unet"]["params"] == numel(pipe.unet) and shown["unet"]["files"] == 1
    assert shown["vae"]["dtypes"] == {"F32"}

    from diffusers import UNet2DConditionModel

    ref_unet = UNet2DConditionModel.from_config(pipe.unet.config).eval()
    ref_unet.load_state_dict({k: v.half().float() for k, v in weights.items()})
    g = torch.Generator().manual_seed(1)
    inputs = {
        "sample": torch.randn(1, 4, 16, 16, generator=g),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 77, 32, generator=g),
    }
    save_file(inputs, tmp_path / "in.safetensors")
    run_sdtune("forward", "--model", folder, "--component", "unet", "--inputs", tmp_path / "in.safetensors",
               "--out", tmp_path / "out.safetensors")
    with torch.no_grad():
        ref = ref_unet(**inputs).sample
    check("cli.unet[fp16 variant]", load_file(tmp_path / "out.safetensors")["sample"], ref)


def test_sharded_text_encoder(run_sdtune, pipeline, copy_pipeline, tmp_path):
    _, pipe = pipeline("tiny")
    folder = copy_pipeline()
    te = folder / "text_encoder"
    (te / "model.safetensors").unlink()
    pipe.text_encoder.save_pretrained(te, max_shard_size="20KB")
    shards = sorted(te.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3, sorted(p.name for p in te.iterdir())
    assert (te / "model.safetensors.index.json").exists() and not (te / "model.safetensors").exists()

    _, shown = inspect(run_sdtune, folder)
    info = shown["text_encoder"]
    assert info["files"] == len(shards), info
    assert info["params"] == numel(pipe.text_encoder) and info["dtypes"] == {"F32"}, info
    assert info["tensors"] == sum(len(load_file(s)) for s in shards)

    prompts = ["a photo of a cat", "", "an astronaut riding a horse on mars, " * 10]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    save_file({"input_ids": ids}, tmp_path / "ids.safetensors")
    run_sdtune("forward", "--model", folder, "--component", "text-encoder", "--inputs", tmp_path / "ids.safetensors",
               "--out", tmp_path / "out.safetensors")
    out = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        ref = pipe.text_encoder(ids)
    check("cli.text-encoder.last_hidden_state[sharded]", out["last_hidden_state"], ref.last_hidden_state)
    check("cli.text-encoder.pooler_output[sharded]", out["pooler_output"], ref.pooler_output)
