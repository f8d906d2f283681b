"""Single-file checkpoints (A1111/ComfyUI layout; src/formats/single_file*): `sdtune convert` writes a
pipeline folder as one .safetensors that diffusers' own from_single_file reads as the same model,
and reads such a file back into a folder that from_pretrained loads. Round trips are bitwise."""

import json
import os
import subprocess

import numpy as np

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

COMPONENTS = ["unet", "vae", "text_encoder"]
XL_COMPONENTS = COMPONENTS + ["text_encoder_2"]


def sdtune(sdtune_bin, *args):
    return subprocess.run([str(sdtune_bin), *map(str, args)], capture_output=True, text=True, timeout=300)


def converted(sdtune_bin, folder, out):
    proc = sdtune(sdtune_bin, "convert", folder, out)
    assert proc.returncode == 0, proc.stderr
    return out


def assert_same_components(a, b, components=COMPONENTS):
    for name in components:
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        sa = {k: v for k, v in sa.items() if not k.endswith("position_ids")}
        sb = {k: v for k, v in sb.items() if not k.endswith("position_ids")}
        assert sa.keys() == sb.keys(), (name, sorted(set(sa) ^ set(sb))[:5])
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (name, k)


@pytest.mark.parametrize("kind", ["tiny", "tiny-deep", "tiny-sd2"])
def test_a_folder_as_one_file_is_the_same_model_in_diffusers(pipeline, sdtune_bin, tmp_path, kind):
    from diffusers import StableDiffusionPipeline

    folder, _ = pipeline(kind)
    one = converted(sdtune_bin, folder, tmp_path / "one.safetensors")
    keys = load_file(one).keys()
    assert any(k.startswith("model.diffusion_model.output_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in keys)
    if kind == "tiny-sd2":  # OpenCLIP's names, q/k/v fused
        assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in keys
        assert "cond_stage_model.model.positional_embedding" in keys
    else:
        assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    # diffusers' reader, configured from the folder (no downloads), against the folder itself.
    theirs = StableDiffusionPipeline.from_single_file(str(one), config=str(folder), local_files_only=True,
                                                      safety_checker=None, requires_safety_checker=False)
    ref = StableDiffusionPipeline.from_pretrained(folder)
    assert_same_components(theirs, ref)
    # And the same outputs: one UNet step and one VAE decode (to float rounding: the weights are
    # equal bitwise, but diffusers' single-file loader leaves them in other memory layouts, which
    # pick other kernels).
    g = torch.Generator().manual_seed(0)
    c = ref.unet.config
    x = torch.randn(1, c.in_channels, c.sample_size, c.sample_size, generator=g)
    ctx = torch.randn(1, 77, c.cross_attention_dim, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(theirs.unet(x, 10, ctx).sample, ref.unet(x, 10, ctx).sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.vae.decode(x).sample, ref.vae.decode(x).sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["tiny-deep", "sd2"])
def test_a_single_file_round_trips_bitwise(pipeline, sdtune_bin, tmp_path, kind):
    from diffusers import StableDiffusionPipeline

    folder, _ = pipeline(kind)
    one = converted(sdtune_bin, folder, tmp_path / "one.safetensors")
    proc = sdtune(sdtune_bin, "convert", one, tmp_path / "back", "--config", folder)
    assert proc.returncode == 0, proc.stderr
    assert_same_components(StableDiffusionPipeline.from_pretrained(tmp_path / "back"),
                           StableDiffusionPipeline.from_pretrained(folder))
    again = converted(sdtune_bin, tmp_path / "back", tmp_path / "again.safetensors")
    assert again.read_bytes() == one.read_bytes()


def test_a_published_style_file_with_extras_and_fp16(pipeline, sdtune_bin, tmp_path):
    """What A1111 files carry besides the three components (EMA copies, the noise schedule's buffers,
    the text encoder's position_ids) is ignored; fp16 stays fp16, and --dtype converts."""
    from diffusers import StableDiffusionPipeline

    folder, _ = pipeline("tiny")
    state = load_file(converted(sdtune_bin, folder, tmp_path / "one.safetensors"))
    extras = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(100),
              "model_ema.diffusion_modelconv_inweight": torch.zeros(3), "alphas_cumprod": torch.rand(1000),
              "betas": torch.rand(1000),
              "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]}
    published = tmp_path / "published.safetensors"
    save_file({**{k: v.half() for k, v in state.items()}, **extras}, published)
    proc = sdtune(sdtune_bin, "convert", published, tmp_path / "out", "--config", folder)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(state)} tensors, {len(extras)} other keys ignored" in proc.stdout, proc.stdout
    stored = load_file(tmp_path / "out/unet/diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for v in stored.values())
    got = StableDiffusionPipeline.from_pretrained(tmp_path / "out", dtype=torch.float16)
    ref = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float16)
    assert_same_components(got, ref)
    proc = sdtune(sdtune_bin, "convert", published, tmp_path / "out32", "--config", folder, "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr
    stored = load_file(tmp_path / "out32/vae/diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float32 for v in stored.values())


def test_wrong_files_are_named_errors(pipeline, sdtune_bin, tmp_path):
    folder, _ = pipeline("tiny")
    state = load_file(converted(sdtune_bin, folder, tmp_path / "one.safetensors"))
    # A UNet tensor gone: the folder would not load; the error names it, and nothing is left behind.
    gone = "model.diffusion_model.out.2.weight"
    save_file({k: v for k, v in state.items() if k != gone}, tmp_path / "partial.safetensors")
    proc = sdtune(sdtune_bin, "convert", tmp_path / "partial.safetensors", tmp_path / "out", "--config", folder)
    assert proc.returncode == 1 and "conv_out.weight" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
    # No VAE at all.
    save_file({k: v for k, v in state.items() if not k.startswith("first_stage_model.")}, tmp_path / "novae.safetensors")
    proc = sdtune(sdtune_bin, "convert", tmp_path / "novae.safetensors", tmp_path / "out", "--config", folder)
    assert proc.returncode == 1 and "no vae tensors" in proc.stderr, proc.stderr
    # An existing destination is not overwritten.
    (tmp_path / "taken").mkdir()
    proc = sdtune(sdtune_bin, "convert", tmp_path / "one.safetensors", tmp_path / "taken", "--config", folder)
    assert proc.returncode == 1 and "already exists" in proc.stderr, proc.stderr
    # A pickle that is no zip archive; and a pickle is never written.
    (tmp_path / "model.ckpt").write_bytes(b"PK\x03\x04 not really")
    proc = sdtune(sdtune_bin, "convert", tmp_path / "model.ckpt", tmp_path / "out", "--config", folder)
    assert proc.returncode == 1 and "model.ckpt: not a readable PyTorch checkpoint" in proc.stderr, proc.stderr
    proc = sdtune(sdtune_bin, "convert", folder, tmp_path / "out.ckpt")
    assert proc.returncode == 1 and "never as pickles" in proc.stderr, proc.stderr
    # A folder to a folder.
    assert "DST must be a single file" in sdtune(sdtune_bin, "convert", folder, tmp_path / "x").stderr


def test_an_openclip_file_with_its_last_layer_and_projection(pipeline, sdtune_bin, tmp_path):
    """SD 2.x files carry OpenCLIP's whole text tower: the last layer (SD 2.x conditions on the
    penultimate one, so diffusers' text encoder has one layer fewer), text_projection and
    logit_scale. They are ignored; an SD 1.x config for an SD 2.x file is a named error."""
    from diffusers import StableDiffusionPipeline

    folder, _ = pipeline("sd2")
    state = load_file(converted(sdtune_bin, folder, tmp_path / "one.safetensors"))
    p = "cond_stage_model.model."
    last = {k.replace("resblocks.1.", "resblocks.2."): torch.randn_like(v)
            for k, v in state.items() if k.startswith(p + "transformer.resblocks.1.")}
    extras = {**last, p + "text_projection": torch.randn(1024, 1024), p + "logit_scale": torch.tensor(4.6)}
    save_file({**state, **extras}, tmp_path / "full.safetensors")
    proc = sdtune(sdtune_bin, "convert", tmp_path / "full.safetensors", tmp_path / "out", "--config", folder)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(extras)} other keys ignored" in proc.stdout, proc.stdout
    assert_same_components(StableDiffusionPipeline.from_pretrained(tmp_path / "out"),
                           StableDiffusionPipeline.from_pretrained(folder))
    proc = sdtune(sdtune_bin, "convert", tmp_path / "full.safetensors", tmp_path / "wrong", "--config",
                  pipeline("tiny")[0])
    assert proc.returncode == 1 and "the file's text encoders are SD 2.x's, but --config's are SD 1.x's" \
        in proc.stderr, proc.stderr


def test_ema_weights_are_taken_when_asked(pipeline, sdtune_bin, tmp_path):
    """CompVis training saves the UNet's EMA under flattened names (model_ema.diffusion_model +
    the key without its dots); --ema-weights takes them, as diffusers' extract_ema does."""
    folder, _ = pipeline("tiny")
    state = load_file(converted(sdtune_bin, folder, tmp_path / "one.safetensors"))
    unet = "model.diffusion_model."
    ema = {"model_ema." + "".join(k.split(".")[1:]): v + 1 for k, v in state.items() if k.startswith(unet)}
    save_file({**state, **ema, "model_ema.decay": torch.tensor(0.9999)}, tmp_path / "ema.safetensors")
    for flag, shift in (([], 0), (["--ema-weights"], 1)):
        out = tmp_path / f"out{shift}"
        proc = sdtune(sdtune_bin, "convert", tmp_path / "ema.safetensors", out, "--config", folder, *flag)
        assert proc.returncode == 0, proc.stderr
        got = load_file(out / "unet/diffusion_pytorch_model.safetensors")
        want = load_file(folder / "unet/diffusion_pytorch_model.safetensors")
        assert all(torch.equal(got[k], want[k] + shift) for k in want)
    proc = sdtune(sdtune_bin, "convert", tmp_path / "one.safetensors", tmp_path / "none", "--config", folder,
                  "--ema-weights")
    assert proc.returncode == 1 and "no EMA copy" in proc.stderr, proc.stderr


@pytest.mark.parametrize("kind", ["tiny", "sd2"])
def test_inspect_a_single_file(pipeline, sdtune_bin, tmp_path, kind):
    folder, pipe = pipeline(kind)
    one = converted(sdtune_bin, folder, tmp_path / "one.safetensors")
    save_file({**load_file(one), "model_ema.decay": torch.tensor(0.9999)}, tmp_path / "ema.safetensors")
    proc = sdtune(sdtune_bin, "inspect", tmp_path / "ema.safetensors")
    assert proc.returncode == 0, proc.stderr
    arch = "SD 2.x (OpenCLIP text encoder)" if kind == "sd2" else "SD 1.x (CLIP text encoder)"
    assert f"single-file checkpoint: {arch}, cross-attention width {pipe.unet.config.cross_attention_dim}" \
        in proc.stdout, proc.stdout
    for name in ("unet", "vae"):  # every parameter, under its component
        n = sum(p.numel() for p in getattr(pipe, name).parameters())
        assert f"  {name}: {len(getattr(pipe, name).state_dict())} tensors, " in proc.stdout, proc.stdout
        assert f"parameters ({n})" in proc.stdout
    assert "  EMA copy (model_ema.*): 1 tensors" in proc.stdout
    # How --model would read it: the tiny pipelines' 32-wide layers cannot hold SD's 64-wide heads
    # (test_a_file_alone_reads_as_its_pipeline covers the ones that can).
    assert "read as: not without --config (width 32 is no multiple of 64" in proc.stdout, proc.stdout


def cached_env(tmp_path):
    """sdtune's cache (where --model FILE is read into a folder) under the test's own folder."""
    return {**os.environ, "SDTUNE_CACHE_DIR": str(tmp_path / "cache")}


def plain(x):
    return [plain(v) for v in x] if isinstance(x, (list, tuple)) else x


@pytest.mark.parametrize("kind", ["file-sd1", "file-sd2"])
def test_a_file_alone_reads_as_its_pipeline(pipeline, sdtune_bin, tmp_path, kind):
    """No --config: the architecture comes from the tensors, the rest (heads, norm groups, scheduler,
    tokenizer) from SD 1.x's and SD 2.x's published configs. The tiny pipelines follow those, so every
    setting diffusers reads must come back as it was."""
    from diffusers import StableDiffusionPipeline

    folder, ref = pipeline(kind)
    one = converted(sdtune_bin, folder, tmp_path / "one.safetensors")
    proc = sdtune(sdtune_bin, "convert", one, tmp_path / "back")
    assert proc.returncode == 0, proc.stderr
    assert f"({'SD 2.x' if kind == 'file-sd2' else 'SD 1.x'}, configs from the tensors)" in proc.stdout, proc.stdout
    got = StableDiffusionPipeline.from_pretrained(tmp_path / "back")
    assert_same_components(got, ref)
    for name in ("unet", "vae"):
        theirs, ours = getattr(ref, name).config, getattr(got, name).config
        differ = {k: (plain(ours[k]), plain(v)) for k, v in theirs.items()
                  if not k.startswith("_") and plain(ours[k]) != plain(v)}
        assert not differ, (name, differ)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings", "hidden_act"):
        assert getattr(got.text_encoder.config, key) == getattr(ref.text_encoder.config, key), key
    for key in ("prediction_type", "beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "steps_offset"):
        assert got.scheduler.config[key] == ref.scheduler.config[key], key
    # The tokenizer pads as the architecture does (SD 2.x with "!").
    prompt = "a photo of Yoda, ninja portrait!"
    assert got.tokenizer(prompt, padding="max_length", max_length=77).input_ids == \
        ref.tokenizer(prompt, padding="max_length", max_length=77).input_ids
    # And the models compute the same (the head counts are right, which weights alone do not show).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, ref.unet.config.cross_attention_dim, generator=g)
    ids = ref.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(got.unet(x, 10, ctx).sample, ref.unet(x, 10, ctx).sample)
        assert torch.equal(got.text_encoder(ids)[0], ref.text_encoder(ids)[0])


# The original LDM config of a 768-v SD 2.x model (Stability's v2-inference-v.yaml), as A1111 keeps
# it beside the file, with the tiny pipeline's widths.
LDM_YAML = """model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    first_stage_key: "jpg"
    image_size: 96
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    scale_factor: 0.18215
    use_ema: False # we set this to false because this is an inference only config

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32 # unused
        model_channels: 64
        attention_resolutions: [ 4, 2 ]
        channel_mult: [ 1, 2 ]
        num_head_channels: 64 # need to fix for flash-attn
        use_linear_in_transformer: True
        context_dim: 64
        legacy: False
"""


def configs_of(folder):
    return (json.loads((folder / "scheduler/scheduler_config.json").read_text())["prediction_type"],
            json.loads((folder / "unet/config.json").read_text()),
            json.loads((folder / "vae/config.json").read_text()))


def test_what_an_sd2_file_cannot_tell_comes_from_its_yaml_or_the_flag(pipeline, sdtune_bin, tmp_path):
    """An SD 2.x file alone is taken as a 768-v model, as diffusers does. A1111's sidecar MODEL.yaml
    (the original LDM config) says otherwise where it does: a 512-base one has no parameterization
    (noise prediction) and image_size 64. --prediction-type wins over both."""
    one = converted(sdtune_bin, pipeline("file-sd2")[0], tmp_path / "one.safetensors")

    def convert(out, *extra):
        proc = sdtune(sdtune_bin, "convert", one, tmp_path / out, *extra)
        assert proc.returncode == 0, proc.stderr
        pred, unet, vae = configs_of(tmp_path / out)
        return pred, unet["sample_size"], unet["upcast_attention"], unet["attention_head_dim"], vae["scaling_factor"], \
            proc.stdout

    assert convert("alone")[:5] == ("v_prediction", 96, True, [1, 2], 0.18215)
    assert convert("eps", "--prediction-type", "epsilon")[:3] == ("epsilon", 64, False)
    (tmp_path / "one.yaml").write_text(LDM_YAML)
    got = convert("yaml-v")
    assert got[:5] == ("v_prediction", 96, True, [1, 2], 0.18215) and "configs from one.yaml" in got[5], got
    base = LDM_YAML.replace('    parameterization: "v"\n', "").replace("image_size: 96", "image_size: 64") \
        .replace("scale_factor: 0.18215", "scale_factor: 0.13025").replace("num_head_channels: 64", "num_heads: 2")
    (tmp_path / "one.yaml").write_text(base)
    assert convert("yaml-base")[:5] == ("epsilon", 64, False, 2, 0.13025)
    assert convert("yaml-flag", "--prediction-type", "v_prediction")[:3] == ("v_prediction", 64, True)
    # An alias (which can make a small YAML file expand without bound) is refused, naming the file.
    (tmp_path / "one.yaml").write_text("a: &x [1, 2]\nb: *x\n")
    proc = sdtune(sdtune_bin, "convert", one, tmp_path / "alias")
    assert proc.returncode == 1 and "one.yaml: YAML anchors are not read" in proc.stderr, proc.stderr
    proc = sdtune(sdtune_bin, "convert", one, tmp_path / "x", "--prediction-type", "sample")
    assert proc.returncode != 0 and "--prediction-type" in proc.stderr


@pytest.mark.parametrize("kind", ["file-sd1", "file-sd2", "file-sdxl"])
def test_generate_on_the_file_gives_the_folders_image(pipeline, sdtune_bin, tmp_path, kind):
    """--model FILE is read once into a folder in the cache and reused: the same image as the folder,
    pixel for pixel, and the second run reads nothing again. (One scheduler for both: the tiny folder's
    own is PNDM, an SD 2.x file's DDIM.)"""
    folder, _ = pipeline(kind)
    one = converted(sdtune_bin, folder, tmp_path / "one.safetensors")
    env = cached_env(tmp_path)
    args = ["--prompt", "a red circle", "--steps", "3", "--seed", "7", "--width", "32", "--height", "32",
            "--scheduler", "euler", "--quiet"]

    def generate(model, out):
        proc = subprocess.run([str(sdtune_bin), "generate", "--model", str(model), "--out", str(out), *args],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        return np.asarray(Image.open(out)), proc.stderr

    want, _ = generate(folder, tmp_path / "folder.png")
    first, log = generate(one, tmp_path / "file.png")
    assert "reading" in log and str(tmp_path / "cache") in log, log
    again, log = generate(one, tmp_path / "again.png")
    assert "reading" not in log, log
    assert np.array_equal(first, want) and np.array_equal(again, want)
    assert len(list((tmp_path / "cache/single-file").iterdir())) == 1


def test_train_from_a_file_is_training_from_its_folder(pipeline, sdtune_bin, tmp_path):
    """train --model FILE: the same trained weights as from the folder, bit for bit."""
    from safetensors.torch import load_file as load

    folder, _ = pipeline("file-sd1")
    one = converted(sdtune_bin, folder, tmp_path / "one.safetensors")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    (data / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": f"shape {i}"}) + "\n"
                                                 for i in range(2)))
    outs = {}
    for name, model in (("folder", folder), ("file", one)):
        outs[name] = tmp_path / f"out-{name}"
        proc = subprocess.run([str(sdtune_bin), "train", "--model", str(model), "--data", str(data), "--out",
                               str(outs[name]), "--resolution", "32", "--max-steps", "2", "--seed", "3", "--quiet"],
                              capture_output=True, text=True, timeout=600, env=cached_env(tmp_path))
        assert proc.returncode == 0, proc.stderr
    a = load(outs["folder"] / "unet/diffusion_pytorch_model.safetensors")
    b = load(outs["file"] / "unet/diffusion_pytorch_model.safetensors")
    base = load(folder / "unet/diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv_in.weight"], base["conv_in.weight"])  # it trained


def test_an_sdxl_folder_as_one_file_is_the_same_model_in_diffusers(pipeline, sdtune_bin, tmp_path):
    """SDXL's layout: the first text encoder under conditioner.embedders.0.transformer (transformers'
    names), the second under conditioner.embedders.1.model (OpenCLIP's, every layer, with
    text_projection transposed), the text_time embedding as label_emb. diffusers' own reader takes it
    as the folder's model; back with --config it is the folder again, and again the same bytes."""
    from diffusers import StableDiffusionXLPipeline

    folder, _ = pipeline("sdxl")
    one = converted(sdtune_bin, folder, tmp_path / "one.safetensors")
    state = load_file(one)
    ref = StableDiffusionXLPipeline.from_pretrained(folder)
    for key in ("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight",
                "model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.label_emb.0.2.bias",
                "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight"):
        assert key in state, key
    assert torch.equal(state["conditioner.embedders.1.model.text_projection"],
                       ref.text_encoder_2.text_projection.weight.T)
    assert not any(k.startswith("cond_stage_model.") for k in state)
    theirs = StableDiffusionXLPipeline.from_single_file(str(one), config=str(folder), local_files_only=True)
    assert_same_components(theirs, ref, XL_COMPONENTS)

    proc = sdtune(sdtune_bin, "convert", one, tmp_path / "back", "--config", folder)
    assert proc.returncode == 0, proc.stderr
    assert "(SDXL, configs from" in proc.stdout, proc.stdout
    assert_same_components(StableDiffusionXLPipeline.from_pretrained(tmp_path / "back"), ref, XL_COMPONENTS)
    again = converted(sdtune_bin, tmp_path / "back", tmp_path / "again.safetensors")
    assert again.read_bytes() == one.read_bytes()
    # An SD 1.x config for an SDXL file, and a refiner-like file (one OpenCLIP encoder): named errors.
    proc = sdtune(sdtune_bin, "convert", one, tmp_path / "wrong", "--config", pipeline("tiny")[0])
    assert proc.returncode == 1 and "the file's text encoders are SDXL's, but --config's are SD 1.x's" \
        in proc.stderr, proc.stderr
    refiner = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in state.items()
               if not k.startswith("conditioner.embedders.0.")}
    save_file(refiner, tmp_path / "refiner.safetensors")
    proc = sdtune(sdtune_bin, "convert", tmp_path / "refiner.safetensors", tmp_path / "r")
    assert proc.returncode == 1 and "an SDXL refiner" in proc.stderr, proc.stderr


def test_an_sdxl_file_alone_reads_as_its_pipeline(pipeline, sdtune_bin, tmp_path):
    """No --config: transformer depths per level, the time-id embedding's width, both encoders and the
    projection from the tensors; heads, the VAE's scale and upcast, the scheduler and both tokenizers
    as SDXL base publishes them. The toy pipeline follows those, so every setting comes back."""
    from diffusers import StableDiffusionXLPipeline

    folder, ref = pipeline("file-sdxl")
    one = converted(sdtune_bin, folder, tmp_path / "one.safetensors")
    proc = sdtune(sdtune_bin, "inspect", one)
    assert "single-file checkpoint: SDXL (CLIP and OpenCLIP text encoders), cross-attention width 128" \
        in proc.stdout, proc.stdout
    assert "read as: SDXL;" in proc.stdout, proc.stdout
    proc = sdtune(sdtune_bin, "convert", one, tmp_path / "back")
    assert proc.returncode == 0, proc.stderr
    assert "(SDXL, configs from the tensors)" in proc.stdout, proc.stdout
    got = StableDiffusionXLPipeline.from_pretrained(tmp_path / "back")
    assert_same_components(got, ref, XL_COMPONENTS)
    for name in ("unet", "vae"):
        theirs, ours = getattr(ref, name).config, getattr(got, name).config
        differ = {k: (plain(ours[k]), plain(v)) for k, v in theirs.items()
                  if not k.startswith("_") and plain(ours[k]) != plain(v)}
        assert not differ, (name, differ)
    for encoder in ("text_encoder", "text_encoder_2"):
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings", "hidden_act", "eos_token_id"):
            assert getattr(getattr(got, encoder).config, key) == getattr(getattr(ref, encoder).config, key), \
                (encoder, key)
    assert got.text_encoder_2.config.projection_dim == ref.text_encoder_2.config.projection_dim
    assert type(got.scheduler).__name__ == "EulerDiscreteScheduler"
    for key in ("prediction_type", "beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "steps_offset",
                "timestep_spacing", "interpolation_type"):
        assert got.scheduler.config[key] == ref.scheduler.config[key], key
    assert got.config.force_zeros_for_empty_prompt
    prompt = "a photo of Yoda, ninja portrait!"
    for tokenizer in ("tokenizer", "tokenizer_2"):  # the second pads with "!"
        assert getattr(got, tokenizer)(prompt, padding="max_length", max_length=77).input_ids == \
            getattr(ref, tokenizer)(prompt, padding="max_length", max_length=77).input_ids
    # The same outputs: the UNet with its time ids, and the second encoder's pooled projection.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 128, generator=g)
    cond = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    ids = ref.tokenizer_2(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(got.unet(x, 10, ctx, added_cond_kwargs=cond).sample,
                           ref.unet(x, 10, ctx, added_cond_kwargs=cond).sample)
        assert torch.equal(got.text_encoder_2(ids).text_embeds, ref.text_encoder_2(ids).text_embeds)
