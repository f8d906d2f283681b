"""LoRA files: one made with diffusers/PEFT gives sdtune the outputs diffusers computes with it;
files sdtune writes (diffusers and kohya layouts) load in diffusers with the same outputs; the
kohya round trip is lossless; `--lora` on generate equals `lora merge`; bad files get one-line
errors that name what is wrong."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from parity import check
from safetensors import safe_open
from safetensors.torch import load_file, save_file

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


@pytest.fixture(scope="module")
def tiny(pipeline):
    return pipeline("tiny")[0]


@pytest.fixture(scope="module")
def peft_lora(tiny, tmp_path_factory):
    """A LoRA trained-looking (random up weights) made by PEFT and saved by diffusers, with rank 4 /
    alpha 8 on the UNet's attention and rank 2 / alpha 6 on the text encoder's attention and MLP."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(tiny, safety_checker=None, requires_safety_checker=False)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    pipe.text_encoder.add_adapter(LoraConfig(r=2, lora_alpha=6, init_lora_weights="gaussian",
                                             target_modules=TE_TARGETS))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in list(pipe.unet.named_parameters()) + list(pipe.text_encoder.named_parameters()):
            if "lora_B" in name:  # PEFT starts B at zero: make the update visible
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    folder = tmp_path_factory.mktemp("peft_lora")
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config["default"].to_dict())
    return folder / "pytorch_lora_weights.safetensors"


def inputs():
    g = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor([999, 10]),
                encoder_hidden_states=torch.randn(2, 77, 32, generator=g))


def token_ids(tiny):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(Path(tiny) / "tokenizer")
    return tok(["Yoda ninja portrait", "a photo of sks dog"], padding="max_length", max_length=77,
               return_tensors="pt").input_ids


def diffusers_outputs(tiny, lora_file, scale=1.0):
    """UNet and text-encoder outputs of diffusers with `lora_file` loaded (pipe.load_lora_weights)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny, safety_checker=None, requires_safety_checker=False)
    if lora_file is not None:
        pipe.load_lora_weights(Path(lora_file).parent, weight_name=Path(lora_file).name, adapter_name="x")
        pipe.set_adapters(["x"], adapter_weights=[scale])
    x = inputs()
    with torch.no_grad():
        unet = pipe.unet(x["sample"], x["timestep"], x["encoder_hidden_states"]).sample
        text = pipe.text_encoder(token_ids(tiny)).last_hidden_state
    return unet, text


def sdtune_outputs(forward, tiny, *lora_args):
    extra = [a for arg in lora_args for a in ("--lora", arg)]
    unet = forward(tiny, "unet", *extra, **inputs())["sample"]
    text = forward(tiny, "text-encoder", *extra, input_ids=token_ids(tiny))["last_hidden_state"]
    return unet, text


@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_a_peft_lora_gives_diffusers_outputs(tiny, peft_lora, forward, scale):
    ref_unet, ref_text = diffusers_outputs(tiny, peft_lora, scale)
    base_unet, base_text = diffusers_outputs(tiny, None)
    unet, text = sdtune_outputs(forward, tiny, f"{peft_lora}:{scale}")
    check(f"lora (peft, scale {scale}) unet", unet, ref_unet, 1e-4)
    check(f"lora (peft, scale {scale}) text encoder", text, ref_text, 1e-4)
    # The LoRA changes both outputs by far more than the tolerance: the check above is not vacuous.
    assert (ref_unet - base_unet).abs().max() > 100 * 1e-4 * ref_unet.abs().max()
    assert (ref_text - base_text).abs().max() > 100 * 1e-4 * ref_text.abs().max()


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_files_sdtune_writes_load_in_diffusers(tiny, peft_lora, run_sdtune, tmp_path, fmt):
    out = tmp_path / f"lora_{fmt}.safetensors"
    run_sdtune("lora", "convert", "--model", tiny, "--lora", peft_lora, "--out", out, "--format", fmt)
    with safe_open(out, "pt") as f:
        keys = list(f.keys())
        meta = f.metadata() or {}
    if fmt == "kohya":
        assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
        assert any(k.endswith(".alpha") for k in keys) and any(k.endswith(".lora_up.weight") for k in keys)
    else:
        assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
        md = json.loads(meta["lora_adapter_metadata"])
        assert (md["unet.r"], md["unet.lora_alpha"]) == (4, 8)
        assert (md["text_encoder.r"], md["text_encoder.lora_alpha"]) == (2, 6)
    ref_unet, ref_text = diffusers_outputs(tiny, peft_lora)
    unet, text = diffusers_outputs(tiny, out)
    check(f"lora ({fmt} file by sdtune) in diffusers: unet", unet, ref_unet, 1e-5)
    check(f"lora ({fmt} file by sdtune) in diffusers: text encoder", text, ref_text, 1e-5)


def test_kohya_round_trip_is_lossless(tiny, peft_lora, run_sdtune, tmp_path):
    a, k, b = tmp_path / "a.safetensors", tmp_path / "k.safetensors", tmp_path / "b.safetensors"
    run_sdtune("lora", "convert", "--model", tiny, "--lora", peft_lora, "--out", a, "--format", "diffusers")
    run_sdtune("lora", "convert", "--model", tiny, "--lora", a, "--out", k, "--format", "kohya")
    run_sdtune("lora", "convert", "--model", tiny, "--lora", k, "--out", b, "--format", "diffusers")
    ta, tb, src = load_file(a), load_file(b), load_file(peft_lora)
    assert ta.keys() == tb.keys() and len(ta) == len(src)
    assert all(torch.equal(ta[key], tb[key]) for key in ta)
    with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
        assert json.loads(fa.metadata()["lora_adapter_metadata"]) == json.loads(fb.metadata()["lora_adapter_metadata"])
    # The PEFT file's own tensors survive too (A = down, B = up).
    for key, value in ta.items():
        assert torch.equal(value, src[key] if key in src else src[key.replace("text_encoder.text_model.", "text_encoder.")])


def test_generate_with_lora_equals_the_merged_model(tiny, peft_lora, run_sdtune, tmp_path):
    from PIL import Image

    merged = tmp_path / "merged"
    run_sdtune("lora", "merge", "--model", tiny, "--lora", f"{peft_lora}:0.8", "--out", merged)
    common = ["--prompt", "a photo of sks dog", "--seed", 3, "--steps", 3, "--quiet"]
    run_sdtune("generate", "--model", tiny, "--lora", f"{peft_lora}:0.8", "--out", tmp_path / "a.png", *common)
    run_sdtune("generate", "--model", merged, "--out", tmp_path / "b.png", *common)
    run_sdtune("generate", "--model", tiny, "--out", tmp_path / "c.png", *common)
    a, b, c = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # diffusers loads the merged folder.
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.from_pretrained(merged, safety_checker=None, requires_safety_checker=False)


def test_bad_lora_files(tiny, peft_lora, run_sdtune, tmp_path):
    x = tmp_path / "in.safetensors"
    save_file(inputs(), x)
    base = ["forward", "--model", tiny, "--component", "unet", "--inputs", x, "--out", tmp_path / "o.safetensors"]
    # Missing file.
    proc = run_sdtune(*base, "--lora", tmp_path / "nope.safetensors", check=False)
    assert proc.returncode != 0 and "LoRA file not found" in proc.stderr and "nope.safetensors" in proc.stderr
    # Layers of another architecture: their names are reported.
    foreign = tmp_path / "foreign.safetensors"
    save_file({"unet.mid_block.attentions.7.proj.lora_A.weight": torch.zeros(4, 32),
               "unet.mid_block.attentions.7.proj.lora_B.weight": torch.zeros(32, 4)}, foreign)
    proc = run_sdtune(*base, "--lora", foreign, check=False)
    assert proc.returncode != 0 and "match no layer" in proc.stderr
    assert "mid_block.attentions.7.proj" in proc.stderr and "foreign.safetensors" in proc.stderr
    # Right names, wrong shapes (rank 4 but another width).
    wrong = {k: torch.zeros(4, 7) if k.startswith("unet.") and "lora_A" in k else v
             for k, v in load_file(peft_lora).items()}
    save_file(wrong, tmp_path / "wrong.safetensors")
    proc = run_sdtune(*base, "--lora", tmp_path / "wrong.safetensors", check=False)
    assert proc.returncode != 0 and "vs weight" in proc.stderr
    # Not a LoRA at all.
    save_file({"weight": torch.zeros(2)}, tmp_path / "plain.safetensors")
    proc = run_sdtune(*base, "--lora", tmp_path / "plain.safetensors", check=False)
    assert proc.returncode != 0 and "no LoRA weights" in proc.stderr
    for p in (proc,):
        assert len(p.stderr.strip().splitlines()) == 1


def test_an_attention_processor_lora_gives_diffusers_outputs(tiny, peft_lora, forward, tmp_path):
    """diffusers 0.13-0.16 saved LoRAs by attention processor ("...attn1.processor.to_q_lora.down.weight";
    the first files had no "unet." prefix), with no alpha: the scale is 1. Made here from the PEFT file,
    its up weights scaled by alpha / rank so that the update is the PEFT one. diffusers today reads only
    the prefixed spelling; sdtune reads the unprefixed one as the same LoRA."""
    scale = 8 / 4  # peft_lora: rank 4, alpha 8 on the UNet
    files = {}
    for prefix in ("unet.", ""):
        old = {}
        for k, v in load_file(peft_lora).items():
            if not k.startswith("unet."):
                continue
            module, ab = k[len("unet."):-len(".lora_A.weight")], k.split(".")[-2]
            path, proj = (module[:-len(".to_out.0")], "to_out") if module.endswith(".to_out.0") else module.rsplit(".", 1)
            part = "down" if ab == "lora_A" else "up"
            old[f"{prefix}{path}.processor.{proj}_lora.{part}.weight"] = v * scale if part == "up" else v
        files[prefix] = tmp_path / f"attn_procs{prefix or '_bare'}.safetensors"
        save_file(old, files[prefix])
    ref_unet, _ = diffusers_outputs(tiny, files["unet."])
    base_unet, _ = diffusers_outputs(tiny, None)
    unet, _ = sdtune_outputs(forward, tiny, str(files["unet."]))
    check("lora (attention processors) unet", unet, ref_unet, 1e-4)
    assert (ref_unet - base_unet).abs().max() > 100 * 1e-4 * ref_unet.abs().max()
    bare, _ = sdtune_outputs(forward, tiny, str(files[""]))
    assert torch.equal(bare, unet)


def kohya_name(component, module):
    return ("lora_unet_" if component == "unet" else "lora_te_") + module.replace(".", "_")


# LoCon files as kohya's sd-scripts and LyCORIS write them: linear and convolution layers (3×3
# resnet convolutions, 1×1 projections) of both components, only some layers of the model.
# (component, module, rank, alpha); alpha None: the file has none for the layer (scale 1).
KOHYA_UNIFORM = [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", 4, 2.0),
    ("unet", "down_blocks.0.attentions.0.proj_in", 4, 2.0),
    ("unet", "down_blocks.0.resnets.0.conv1", 4, 2.0),
    ("unet", "up_blocks.1.resnets.0.conv_shortcut", 4, 2.0),
    ("unet", "mid_block.resnets.0.time_emb_proj", 4, 2.0),
    ("text_encoder", "text_model.encoder.layers.1.mlp.fc1", 4, 2.0),
]
KOHYA_MIXED = [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 4, 2.0),
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 4, 8.0),
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", 2, 1.0),
    ("unet", "down_blocks.0.attentions.0.proj_in", 4, 4.0),
    ("unet", "down_blocks.0.resnets.0.conv1", 4, 1.0),
    ("unet", "up_blocks.1.resnets.0.conv_shortcut", 2, None),
    ("unet", "mid_block.resnets.0.time_emb_proj", 4, 3.0),
    ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", 2, 1.0),
    ("text_encoder", "text_model.encoder.layers.1.mlp.fc1", 4, 2.0),
]


def submodule(model, module):
    try:
        return model.get_submodule(module)
    except AttributeError:  # transformers 5's CLIPTextModel has no text_model level
        return model.get_submodule(module.removeprefix("text_model."))


def kohya_file(tiny, path, layers):
    """A kohya LoRA file of random weights for `layers`; returns the path."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny, safety_checker=None, requires_safety_checker=False)
    g = torch.Generator().manual_seed(5)
    out = {}
    for component, module, rank, alpha in layers:
        w = submodule(getattr(pipe, component), module).weight
        name = kohya_name(component, module)
        if w.dim() == 4:  # LoCon: the down convolution has the layer's kernel, the up one is 1×1
            out[name + ".lora_down.weight"] = torch.randn(rank, w.shape[1], *w.shape[2:], generator=g) * 0.3
            out[name + ".lora_up.weight"] = torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.3
        else:
            out[name + ".lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * 0.3
            out[name + ".lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.3
        if alpha is not None:
            out[name + ".alpha"] = torch.tensor(alpha)
    save_file(out, path)
    return path


def kohya_merged_outputs(tiny, lora_file, layers, multiplier):
    """The reference by kohya's and A1111's rule, written out here: each layer's weight gains
    multiplier · alpha / rank · up · down (alpha missing: alpha = rank); a LoCon up convolution is 1×1,
    so up · down is the down kernel mixed across channels."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny, safety_checker=None, requires_safety_checker=False)
    state = load_file(lora_file)
    with torch.no_grad():
        for component, module, rank, alpha in layers:
            name = kohya_name(component, module)
            down, up = state[name + ".lora_down.weight"], state[name + ".lora_up.weight"]
            scale = multiplier * (state[name + ".alpha"].item() / rank if name + ".alpha" in state else 1.0)
            w = submodule(getattr(pipe, component), module).weight
            w += scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape)
    x = inputs()
    with torch.no_grad():
        unet = pipe.unet(x["sample"], x["timestep"], x["encoder_hidden_states"]).sample
        text = pipe.text_encoder(token_ids(tiny)).last_hidden_state
    return unet, text


def test_a_kohya_locon_file_gives_diffusers_outputs(tiny, forward, tmp_path):
    """kohya/A1111 keys, LoCon convolutions, part of the model: sdtune's outputs are diffusers' with the
    same file loaded by load_lora_weights (one alpha for all layers: see the next test)."""
    lora = kohya_file(tiny, tmp_path / "locon.safetensors", KOHYA_UNIFORM)
    ref_unet, ref_text = diffusers_outputs(tiny, lora, 0.6)
    base_unet, base_text = diffusers_outputs(tiny, None)
    unet, text = sdtune_outputs(forward, tiny, f"{lora}:0.6")
    check("lora (kohya LoCon) unet", unet, ref_unet, 1e-4)
    check("lora (kohya LoCon) text encoder", text, ref_text, 1e-4)
    assert (ref_unet - base_unet).abs().max() > 100 * 1e-4 * ref_unet.abs().max()
    assert (ref_text - base_text).abs().max() > 100 * 1e-4 * ref_text.abs().max()


@pytest.mark.parametrize("multiplier", [1.0, 0.6])
def test_kohya_alphas_mean_what_they_mean_in_kohya(tiny, forward, tmp_path, multiplier):
    """Per-layer alphas (scale alpha / rank) and a layer without one (scale 1), as sd-scripts and A1111
    apply them. diffusers 0.42 is not the reference here: its kohya loader gives attention layers and a
    layer without alpha another scale, and under transformers 5 it drops the text encoder's attention
    layers. The reference merges the file by kohya's rule instead (kohya_merged_outputs)."""
    lora = kohya_file(tiny, tmp_path / "mixed.safetensors", KOHYA_MIXED)
    ref_unet, ref_text = kohya_merged_outputs(tiny, lora, KOHYA_MIXED, multiplier)
    unet, text = sdtune_outputs(forward, tiny, f"{lora}:{multiplier}")
    check("lora (kohya alphas) unet", unet, ref_unet, 1e-4)
    check("lora (kohya alphas) text encoder", text, ref_text, 1e-4)


def test_a_peft_adapter_file_and_keys_sdtune_cannot_read(tiny, peft_lora, forward, run_sdtune, tmp_path):
    """PEFT's own adapter_model.safetensors (PeftModel.save_pretrained of the UNet or the text encoder:
    "base_model.model.<module>.lora_A.weight") reads as the diffusers file's layers. Keys of adapter kinds
    sdtune does not apply (DoRA's magnitude, LoHa) are an error that names them, never silently dropped."""
    state = load_file(peft_lora)
    for component in ("unet", "text_encoder"):
        peft = {"base_model.model." + k[len(component) + 1:]: v for k, v in state.items() if k.startswith(component + ".")}
        if component == "text_encoder":  # transformers' module paths start with text_model.
            peft = {k if k.startswith("base_model.model.text_model.") else
                    k.replace("base_model.model.", "base_model.model.text_model.", 1): v for k, v in peft.items()}
        save_file(peft, tmp_path / f"{component}_adapter.safetensors")
    only = {k: v for k, v in state.items()}
    save_file(only, tmp_path / "both.safetensors")
    want = sdtune_outputs(forward, tiny, str(tmp_path / "both.safetensors"))
    got = sdtune_outputs(forward, tiny, str(tmp_path / "unet_adapter.safetensors"),
                         str(tmp_path / "text_encoder_adapter.safetensors"))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    x = tmp_path / "in.safetensors"
    save_file(inputs(), x)
    dora = dict(state)
    dora["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_magnitude_vector"] = torch.ones(32)
    save_file(dora, tmp_path / "dora.safetensors")
    proc = run_sdtune("forward", "--model", tiny, "--component", "unet", "--inputs", x, "--out", tmp_path / "o.st",
                      "--lora", tmp_path / "dora.safetensors", check=False)
    assert proc.returncode == 1 and "lora_magnitude_vector" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
