"""`sdtune generate` against diffusers' StableDiffusionPipeline on the same random tiny model:
same seed, same image (at most 1 level of 255 apart on >= 99.9% of pixels).

The reference is loaded from the saved folder with from_pretrained, as a user loads it: a
scheduler built in code remembers which settings were defaults (`_use_default_values`) and
another scheduler class made from its config would then take its own defaults instead (e.g.
Euler's linspace spacing), while the saved file states them all."""

import json

import numpy as np
import pytest
import torch
from parity import assert_same_image
from PIL import Image

SCHEDULERS = {
    # --scheduler flags -> the diffusers scheduler built from the model's own config
    "pndm": ([], "PNDMScheduler", {}),
    "ddim": (["--scheduler", "ddim"], "DDIMScheduler", {}),
    "euler-ancestral": (["--scheduler", "euler-ancestral"], "EulerAncestralDiscreteScheduler", {}),
    "dpmpp-2m-karras": (["--scheduler", "dpmpp-2m", "--karras"], "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
}


_REFERENCES = {}


def load_reference(pipeline, kind):
    """(folder, diffusers pipeline loaded from that folder)."""
    from diffusers import StableDiffusionPipeline

    folder, _ = pipeline(kind)
    if kind not in _REFERENCES:
        _REFERENCES[kind] = StableDiffusionPipeline.from_pretrained(folder)
        _REFERENCES[kind].set_progress_bar_config(disable=True)
    return folder, _REFERENCES[kind]


def diffusers_images(pipe, scheduler_class, overrides, prompt, negative, width, height, steps, seed, num_images=1):
    import diffusers

    pipe.scheduler = getattr(diffusers, scheduler_class).from_pretrained(pipe.name_or_path, subfolder="scheduler", **overrides)
    with torch.no_grad():
        out = pipe(prompt, negative_prompt=negative, width=width, height=height, num_inference_steps=steps,
                   guidance_scale=7.5, num_images_per_prompt=num_images,
                   generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return (out.images * 255).round().astype(np.uint8)


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("negative", [None, "blurry, low quality"])
@pytest.mark.parametrize("width,height", [(32, 32), (48, 24)])
def test_generate_matches_diffusers(pipeline, run_sdtune, tmp_path, scheduler, negative, width, height):
    folder, pipe = load_reference(pipeline, "tiny")
    flags, cls, overrides = SCHEDULERS[scheduler]
    seed, steps, prompt = 1234, 8, "a red circle on a white background"
    out = tmp_path / "image.png"
    args = ["generate", "--model", folder, "--prompt", prompt, "--width", width, "--height", height,
            "--steps", steps, "--seed", seed, "--out", out, "--quiet", *flags]
    if negative:
        args += ["--negative-prompt", negative]
    run_sdtune(*args)
    ours = np.asarray(Image.open(out).convert("RGB"))
    reference = diffusers_images(pipe, cls, overrides, prompt, negative, width, height, steps, seed)[0]
    assert_same_image(ours, reference)


def test_num_images_and_parameters_chunk(pipeline, run_sdtune, tmp_path):
    folder, pipe = load_reference(pipeline, "tiny")
    out = tmp_path / "batch.png"
    run_sdtune("generate", "--model", folder, "--prompt", "Yoda ninja portrait", "--negative-prompt", "ugly",
               "--steps", 4, "--seed", 7, "--num-images", 2, "--out", out, "--quiet")
    reference = diffusers_images(pipe, "PNDMScheduler", {}, "Yoda ninja portrait", "ugly", 32, 32, 4, 7, num_images=2)
    for i in range(2):
        image = Image.open(tmp_path / f"batch-{i}.png")
        assert_same_image(np.asarray(image.convert("RGB")), reference[i])
        params = image.info["parameters"]
        lines = params.split("\n")
        assert lines[0] == "Yoda ninja portrait"
        assert lines[1] == "Negative prompt: ugly"
        assert "Steps: 4, Sampler: PLMS, CFG scale: 7.5, Seed: 7, Size: 32x32, Model: " in lines[2]
    assert not out.exists()


def test_benchmark_and_profile(pipeline, run_sdtune, tmp_path):
    """generate --benchmark N --profile: N timed end-to-end runs after a warm-up, one profiled run, and
    still diffusers' image (the timed runs do not change what is generated)."""
    folder, pipe = load_reference(pipeline, "tiny")
    out, trace = tmp_path / "bench.png", tmp_path / "trace.json"
    proc = run_sdtune("generate", "--model", folder, "--prompt", "Yoda ninja portrait", "--steps", 5, "--seed", 11,
                      "--out", out, "--benchmark", 3, "--profile", trace)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["end_to_end_seconds"]) == 3 and len(result["seconds_per_step"]) == 3
    steps = result["steps"]
    assert steps == 6  # PNDM's 5 steps are 6 UNet calls (its PRK warm-up repeats the first)
    for total, per_step in zip(result["end_to_end_seconds"], result["seconds_per_step"]):
        assert 0 < per_step * (steps - 1) < total  # the steps after the first are inside the total
    assert min(result["end_to_end_seconds"]) <= result["end_to_end_seconds_median"] <= max(result["end_to_end_seconds"])
    reference = diffusers_images(pipe, "PNDMScheduler", {}, "Yoda ninja portrait", None, 32, 32, 5, 11)[0]
    assert_same_image(np.asarray(Image.open(out).convert("RGB")), reference)

    profile = result["profile"]
    assert profile["timeline"] == "cpu"
    seconds = {c["category"]: c["seconds"] for c in profile["categories"]}
    assert seconds["convolution"] > 0 and seconds["attention"] > 0 and seconds["matmul"] > 0
    assert abs(sum(seconds.values()) - profile["busy_seconds"]) < 1e-6
    assert profile["busy_seconds"] <= profile["span_seconds"] * 1.001
    assert "convolution" in proc.stderr  # the table
    names = {e.get("name") for e in json.loads(trace.read_text())["traceEvents"]}
    assert "aten::conv2d" in names and "aten::scaled_dot_product_attention" in names


@pytest.mark.parametrize("kind,flags,scheduler", [("tiny", [], "PNDMScheduler"),
                                                   ("sd2", ["--scheduler", "ddim"], "DDIMScheduler")])
def test_channels_last_gives_the_same_image(pipeline, run_sdtune, tmp_path, kind, flags, scheduler):
    """--channels-last changes the convolutions' layout, not what they compute: diffusers' image."""
    folder, pipe = load_reference(pipeline, kind)
    out = tmp_path / "nhwc.png"
    run_sdtune("generate", "--model", folder, "--prompt", "a red circle", "--steps", 4, "--seed", 5,
               "--width", 48, "--height", 32, "--out", out, "--quiet", "--channels-last", *flags)
    reference = diffusers_images(pipe, scheduler, {}, "a red circle", None, 48, 32, 4, 5)[0]
    assert_same_image(np.asarray(Image.open(out).convert("RGB")), reference)


def test_v_prediction_model(pipeline, run_sdtune, tmp_path):
    """The SD 2.x-style model's scheduler predicts v; images still match diffusers."""
    folder, pipe = load_reference(pipeline, "sd2")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    out = tmp_path / "v.png"
    run_sdtune("generate", "--model", folder, "--prompt", "a blue square", "--width", 32, "--height", 40,
               "--steps", 6, "--seed", 3, "--scheduler", "ddim", "--out", out, "--quiet")
    reference = diffusers_images(pipe, "DDIMScheduler", {}, "a blue square", None, 32, 40, 6, 3)[0]
    assert_same_image(np.asarray(Image.open(out).convert("RGB")), reference)


def test_img2img_matches_diffusers(pipeline, run_sdtune, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    folder, pipe = load_reference(pipeline, "tiny")
    rng = np.random.default_rng(0)
    init = (rng.random((40, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(init).save(tmp_path / "init.png")
    out = tmp_path / "img2img.png"
    run_sdtune("generate", "--model", folder, "--prompt", "a green triangle", "--init-image", tmp_path / "init.png",
               "--strength", 0.6, "--steps", 10, "--seed", 11, "--scheduler", "ddim", "--out", out, "--quiet")
    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    i2i.scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    with torch.no_grad():
        ref = i2i("a green triangle", image=Image.fromarray(init), strength=0.6, num_inference_steps=10,
                  guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(11), output_type="np").images
    assert_same_image(np.asarray(Image.open(out).convert("RGB")), (ref[0] * 255).round().astype(np.uint8))


def test_clip_skip_matches_diffusers(pipeline, run_sdtune, tmp_path):
    folder, pipe = load_reference(pipeline, "tiny")
    out = tmp_path / "skip.png"
    run_sdtune("generate", "--model", folder, "--prompt", "a red circle", "--clip-skip", 1, "--steps", 5, "--seed", 5,
               "--scheduler", "ddim", "--out", out, "--quiet")
    import diffusers

    pipe.scheduler = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    # diffusers 0.42's clip_skip path reads text_encoder.text_model, which transformers 5 removed:
    # build its prompt embeddings by its own formula (hidden_states[-(clip_skip + 1)] through the
    # final layer norm; the negative prompt without clip skip) and hand them to the pipeline.
    ids = lambda text: pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                                      return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids("a red circle"), output_hidden_states=True).hidden_states
        prompt_embeds = pipe.text_encoder.final_layer_norm(hidden[-(1 + 1)])
        negative_embeds = pipe.text_encoder(ids("")).last_hidden_state
        ref = pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, num_inference_steps=5,
                   guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(5), output_type="np").images[0]
        no_skip = pipe("a red circle", num_inference_steps=5, guidance_scale=7.5,
                       generator=torch.Generator("cpu").manual_seed(5), output_type="np").images[0]
    ours = np.asarray(Image.open(out).convert("RGB"))
    assert_same_image(ours, (ref * 255).round().astype(np.uint8))
    # Clip skip really changes the conditioning of this model.
    assert np.abs((no_skip * 255).round() - ours).max() > 1


def test_bf16_on_cpu_runs_close_to_fp32(pipeline, run_sdtune, tmp_path):
    folder, _ = pipeline("tiny")
    images = {}
    for dtype in ["fp32", "bf16"]:
        out = tmp_path / f"{dtype}.png"
        run_sdtune("generate", "--model", folder, "--prompt", "a red circle", "--steps", 4, "--seed", 9,
                   "--dtype", dtype, "--out", out, "--quiet")
        images[dtype] = np.asarray(Image.open(out).convert("RGB")).astype(float)
    # bf16 keeps 8 bits of mantissa: the same picture, not the same bits.
    assert np.corrcoef(images["fp32"].ravel(), images["bf16"].ravel())[0, 1] > 0.9
