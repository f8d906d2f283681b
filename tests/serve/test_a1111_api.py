"""The A1111 API as its clients see it: webuiapi (the PyPI client library, test-only) generates
through `sdtune serve` on the tiny world's base model and gets, for each A1111 sampler name, the
image `sdtune generate` makes with the matching --scheduler for the same settings, pixel for pixel;
the PNG carries A1111's parameters text; LoRA tags merge as --lora does and come off again."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from serve_client import BASE

# A1111's sampler names and what `sdtune generate` calls them.
SAMPLERS = {
    "Euler a": ["--scheduler", "euler-ancestral"],
    "Euler": ["--scheduler", "euler"],
    "DPM++ 2M": ["--scheduler", "dpmpp-2m"],
    "DPM++ 2M Karras": ["--scheduler", "dpmpp-2m", "--karras"],
    "DDIM": ["--scheduler", "ddim"],
}
SETTINGS = dict(prompt="a red circle", negative_prompt="blurry", steps=5, cfg_scale=7.5, width=64, height=48)


def generated(run_sdtune, tmp_path, name, seed, *extra, prompt=SETTINGS["prompt"]):
    out = tmp_path / f"{name}.png"
    run_sdtune("generate", "--model", BASE, "--prompt", prompt, "--negative-prompt", SETTINGS["negative_prompt"],
               "--steps", SETTINGS["steps"], "--guidance-scale", SETTINGS["cfg_scale"], "--width", SETTINGS["width"],
               "--height", SETTINGS["height"], "--seed", seed, "--out", out, "--quiet", *extra)
    return np.asarray(Image.open(out).convert("RGB"))


@pytest.fixture
def api(serve):
    import webuiapi

    server = serve("--model", BASE)
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port), server


def test_each_sampler_gives_generates_image(api, run_sdtune, tmp_path):
    client, server = api
    names = [s["name"] for s in client.get_samplers()]
    assert set(SAMPLERS) <= set(names), names
    for name, flags in SAMPLERS.items():
        result = client.txt2img(**SETTINGS, seed=11, sampler_name=name, eta=0.0)
        ours = np.asarray(result.image.convert("RGB"))
        assert np.array_equal(ours, generated(run_sdtune, tmp_path, name, 11, *flags)), name
        # A1111's infotext, in the PNG and in info.
        text = result.image.info["parameters"]
        assert text.startswith("a red circle\nNegative prompt: blurry\n"), text
        assert f"Sampler: {name}," in text and "Seed: 11," in text and "Size: 64x48" in text, text
        assert result.info["infotexts"][0] == text and result.info["sampler_name"] == name
    # PLMS is PNDM without its Runge-Kutta warm-up, which a DDIM config (the base's) asks for, as in
    # diffusers' PNDMScheduler.from_config: a named 422, as `sdtune generate --scheduler pndm` errs.
    status, body, _ = server.request("/sdapi/v1/txt2img", dict(SETTINGS, sampler_name="PLMS"))
    assert status == 422 and "Runge-Kutta" in body["detail"], body


def test_a_batch_is_one_seed_after_another(api, run_sdtune, tmp_path):
    client, _ = api
    result = client.txt2img(**SETTINGS, seed=20, batch_size=2, n_iter=2, sampler_name="Euler")
    assert result.info["all_seeds"] == [20, 21, 22, 23]
    assert len(result.images) == 4
    for i in (1, 3):
        want = generated(run_sdtune, tmp_path, f"seed{20 + i}", 20 + i, "--scheduler", "euler")
        assert np.array_equal(np.asarray(result.images[i].convert("RGB")), want)
    # -1: a random seed, reported.
    result = client.txt2img(**SETTINGS, seed=-1, sampler_name="Euler")
    assert 0 <= result.info["seed"] < 2**32 and result.info["all_seeds"] == [result.info["seed"]]


def test_models_options_progress_and_interrupt_answer_as_a1111(api):
    client, server = api
    (model,) = client.get_sd_models()
    assert model["model_name"] == "base" and model["title"].startswith("base [")
    assert client.get_options()["sd_model_checkpoint"] == model["title"]
    status, _, _ = server.request("/sdapi/v1/options", {"sd_model_checkpoint": "base"})
    assert status == 200
    status, body, _ = server.request("/sdapi/v1/options", {"sd_model_checkpoint": "nope"})
    assert status == 422 and "unknown model 'nope'" in body["detail"]
    progress = client.get_progress()
    assert progress["state"]["job_count"] == 0 and progress["progress"] == 0
    assert [s["name"] for s in server.request("/sdapi/v1/schedulers")[1]] == ["automatic", "karras"]


def random_lora(path, scale=0.3, seed=0):
    """A diffusers-layout LoRA on every attention projection of the base's UNet."""
    unet = load_file(BASE / "unet" / "diffusion_pytorch_model.safetensors")
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for key, w in unet.items():
        if key.endswith(("to_q.weight", "to_k.weight", "to_v.weight")):
            module = key[: -len(".weight")]
            layers[f"unet.{module}.lora_A.weight"] = torch.randn(4, w.shape[1], generator=g) * scale
            layers[f"unet.{module}.lora_B.weight"] = torch.randn(w.shape[0], 4, generator=g) * scale
    save_file(layers, path)
    return path


def test_lora_tags_merge_as_generate_lora_and_come_off(serve, run_sdtune, tmp_path):
    import webuiapi

    lora = random_lora(tmp_path / "style.safetensors")
    server = serve("--model", BASE, "--lora", f"{lora}:0.8")
    client = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    assert [l["name"] for l in server.request("/sdapi/v1/loras")[1]] == ["style"]
    plain = generated(run_sdtune, tmp_path, "plain", 4, "--scheduler", "euler")
    with_lora = generated(run_sdtune, tmp_path, "lora", 4, "--scheduler", "euler", "--lora", f"{lora}:0.7")
    assert not np.array_equal(plain, with_lora)
    tagged = dict(SETTINGS, prompt="a red circle <lora:style:0.7>")
    for _ in range(2):  # merged, then back to the weights as loaded, twice
        got = client.txt2img(**tagged, seed=4, sampler_name="Euler")
        assert np.array_equal(np.asarray(got.image.convert("RGB")), with_lora)
        assert "<lora:style:0.7>" in got.info["infotexts"][0]
        got = client.txt2img(**SETTINGS, seed=4, sampler_name="Euler")
        assert np.array_equal(np.asarray(got.image.convert("RGB")), plain)
    status, body, _ = server.request("/sdapi/v1/txt2img", dict(SETTINGS, prompt="x <lora:other:1>"))
    assert status == 422 and "unknown LoRA 'other'" in body["detail"], body


def test_img2img_takes_a_base64_image(api, run_sdtune, tmp_path):
    client, _ = api
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    init.save(tmp_path / "init.png")
    result = client.img2img(images=[init], **SETTINGS, seed=9, sampler_name="Euler", denoising_strength=0.6)
    want = generated(run_sdtune, tmp_path, "img2img", 9, "--scheduler", "euler", "--init-image",
                     tmp_path / "init.png", "--strength", 0.6)
    assert np.array_equal(np.asarray(result.image.convert("RGB")), want)
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]


def test_outputs_are_written_under_names_of_sdtunes_choosing(serve, tmp_path):
    server = serve("--model", BASE, "--outputs", tmp_path / "served")
    status, body, _ = server.request("/sdapi/v1/txt2img", dict(SETTINGS, seed=3, batch_size=2,
                                                               sampler_name="Euler"))
    assert status == 200
    files = sorted((tmp_path / "served").iterdir())
    assert [f.name.rsplit("-", 1)[1] for f in files] == ["3.png", "4.png"], files
    for f, b64 in zip(files, body["images"]):
        image = Image.open(f)
        assert "Seed: " + f.name.rsplit("-", 1)[1][:-4] in image.info["parameters"]
        assert np.array_equal(np.asarray(image.convert("RGB")),
                              np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(b64))).convert("RGB")))
