"""`sdtune generate` on an SDXL folder against diffusers' StableDiffusionXLPipeline on the same
random tiny SDXL-shaped model: same seed, same image (at most 1 level of 255 apart on >= 99.9% of
pixels), with both prompts, the size/crop conditioning and its negative, clip skip and img2img."""

import numpy as np
import pytest
import torch
from PIL import Image
from parity import assert_same_image

SCHEDULERS = {
    # --scheduler flags -> the diffusers scheduler built from the model's own config
    "euler": ([], "EulerDiscreteScheduler", {}),
    "dpmpp-2m-karras": (["--scheduler", "dpmpp-2m", "--karras"], "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "ddim": (["--scheduler", "ddim"], "DDIMScheduler", {}),
}

_REFERENCE = {}


def load_reference(pipeline):
    """(folder, StableDiffusionXLPipeline loaded from it, without the invisible watermark)."""
    from diffusers import StableDiffusionXLPipeline

    folder, _ = pipeline("sdxl")
    if "sdxl" not in _REFERENCE:
        _REFERENCE["sdxl"] = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
        _REFERENCE["sdxl"].set_progress_bar_config(disable=True)
    return folder, _REFERENCE["sdxl"]


def reference_image(pipe, scheduler_class="EulerDiscreteScheduler", overrides=None, seed=0, **kwargs):
    import diffusers

    pipe.scheduler = getattr(diffusers, scheduler_class).from_pretrained(
        pipe.name_or_path, subfolder="scheduler", **(overrides or {}))
    with torch.no_grad():
        out = pipe(guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kwargs)
    return (out.images[0] * 255).round().astype(np.uint8)


def ours(run_sdtune, folder, out, *args):
    run_sdtune("generate", "--model", folder, "--out", out, "--quiet", *args)
    return np.asarray(Image.open(out).convert("RGB"))


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("negative", [None, "blurry, low quality"])
def test_sdxl_generate_matches_diffusers(pipeline, run_sdtune, tmp_path, scheduler, negative):
    """Non-square 48x32: its 6x4 latents do not divide by the UNet's total downsampling, so the
    up path needs explicit sizes too. Without a negative prompt SDXL's guidance uses zeros
    (force_zeros_for_empty_prompt), with one its encoding."""
    folder, pipe = load_reference(pipeline)
    flags, cls, overrides = SCHEDULERS[scheduler]
    prompt, steps, seed = "a red circle on a white background", 6, 4321
    args = ["--prompt", prompt, "--width", 48, "--height", 32, "--steps", steps, "--seed", seed, *flags]
    if negative:
        args += ["--negative-prompt", negative]
    image = ours(run_sdtune, folder, tmp_path / "xl.png", *args)
    reference = reference_image(pipe, cls, overrides, seed, prompt=prompt, negative_prompt=negative, width=48,
                                height=32, num_inference_steps=steps)
    assert_same_image(image, reference)


def test_sdxl_second_prompts_and_size_conditioning(pipeline, run_sdtune, tmp_path):
    """--prompt-2/--negative-prompt-2 go to the second encoder; the six time ids (and their negative
    ones) reach the UNet as diffusers feeds them, and they change the picture."""
    folder, pipe = load_reference(pipeline)
    common = dict(prompt="a green square", prompt_2="a blue triangle", negative_prompt="ugly",
                  negative_prompt_2="dark", width=40, height=40, num_inference_steps=5)
    sizes = dict(original_size=(512, 768), crops_coords_top_left=(16, 8), target_size=(1024, 1024),
                 negative_original_size=(256, 256), negative_crops_coords_top_left=(0, 32),
                 negative_target_size=(640, 512))
    args = ["--prompt", common["prompt"], "--prompt-2", common["prompt_2"], "--negative-prompt", "ugly",
            "--negative-prompt-2", "dark", "--width", 40, "--height", 40, "--steps", 5, "--seed", 8]
    for name, value in sizes.items():
        args += ["--" + name.replace("_", "-"), *value]
    image = ours(run_sdtune, folder, tmp_path / "sizes.png", *args)
    assert_same_image(image, reference_image(pipe, seed=8, **common, **sizes))
    # The conditioning matters: without the size flags the model draws something else.
    plain = reference_image(pipe, seed=8, **common)
    assert np.abs(plain.astype(int) - image.astype(int)).max() > 8


def test_sdxl_clip_skip_matches_diffusers(pipeline, run_sdtune, tmp_path):
    folder, pipe = load_reference(pipeline)
    image = ours(run_sdtune, folder, tmp_path / "skip.png", "--prompt", "a red circle", "--clip-skip", 1,
                 "--width", 32, "--height", 32, "--steps", 4, "--seed", 5)
    reference = reference_image(pipe, seed=5, prompt="a red circle", clip_skip=1, width=32, height=32,
                                num_inference_steps=4)
    assert_same_image(image, reference)
    no_skip = reference_image(pipe, seed=5, prompt="a red circle", width=32, height=32, num_inference_steps=4)
    assert np.abs(no_skip.astype(int) - image.astype(int)).max() > 1


def test_sdxl_img2img_matches_diffusers(pipeline, run_sdtune, tmp_path):
    """StableDiffusionXLImg2ImgPipeline on the same components: the image's size is the default
    original and target size of the time ids."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    folder, pipe = load_reference(pipeline)
    rng = np.random.default_rng(1)
    init = (rng.random((32, 48, 3)) * 255).astype(np.uint8)
    Image.fromarray(init).save(tmp_path / "init.png")
    image = ours(run_sdtune, folder, tmp_path / "i2i.png", "--prompt", "a green triangle", "--init-image",
                 tmp_path / "init.png", "--strength", 0.6, "--steps", 10, "--seed", 11)
    i2i = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    i2i.scheduler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    with torch.no_grad():
        ref = i2i("a green triangle", image=Image.fromarray(init), strength=0.6, num_inference_steps=10,
                  guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(11), output_type="np").images
    assert_same_image(image, (ref[0] * 255).round().astype(np.uint8))


def test_sdxl_flags_checked(pipeline, run_sdtune, one_line_error, tmp_path):
    """A size flag takes two numbers; SDXL's flags on an SD 1.x model are refused, not ignored."""
    out = tmp_path / "x.png"
    proc = run_sdtune("generate", "--model", pipeline("sdxl")[0], "--prompt", "x", "--original-size", 512,
                      "--steps", 1, "--out", out, "--quiet", check=False)
    one_line_error(proc, "--original-size", "2 required")
    for flags in (["--prompt-2", "a cat"], ["--crops-coords-top-left", 0, 16]):
        proc = run_sdtune("generate", "--model", pipeline("tiny")[0], "--prompt", "x", *flags, "--steps", 1,
                          "--out", out, "--quiet", check=False)
        one_line_error(proc, "SDXL models only")
    assert not out.exists()
