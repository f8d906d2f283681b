"""LoRA and DreamBooth on SDXL, as diffusers' train_dreambooth_lora_sdxl.py makes them: adapters
on the UNet and, with --train-text-encoder, on both text encoders; prior preservation with class
images the SDXL base generates. The files load in diffusers (pytorch_lora_weights.safetensors
with unet./text_encoder./text_encoder_2. keys, and the kohya file with lora_unet_/lora_te1_/
lora_te2_ keys, as A1111 and ComfyUI read SDXL LoRAs), and StableDiffusionXLPipeline with
load_lora_weights gives the image `sdtune generate --lora` gives."""

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from parity import assert_same_image
from train_runs import random_images

R = 32


def test_sdxl_dreambooth_lora_loads_in_diffusers(pipeline, run_sdtune, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    folder, _ = pipeline("sdxl")
    random_images(tmp_path / "instance", 3, seed=2, size=R)
    out = tmp_path / "out"
    proc = run_sdtune("dreambooth", "--model", folder, "--instance-data", tmp_path / "instance",
                      "--instance-prompt", "a photo of sks dog", "--with-prior-preservation",
                      "--class-data", tmp_path / "class", "--class-prompt", "a photo of dog",
                      "--num-class-images", 2, "--class-inference-steps", 4, "--out", out, "--resolution", R, "--center-crop",
                      "--batch-size", 1, "--max-steps", 3, "--learning-rate", 5e-2, "--lr-warmup-steps", 0,
                      "--lora-rank", 4, "--train-text-encoder", "--checkpointing-steps", 0, "--seed", 3, "--quiet")
    # The class images were drawn by the SDXL base itself.
    assert len(list((tmp_path / "class").glob("*.png"))) == 2, proc.stdout

    layers = load_file(out / "pytorch_lora_weights.safetensors")
    prefixes = {k.split(".")[0] for k in layers}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}, prefixes
    kohya = load_file(out / "lora_kohya.safetensors")
    assert {k.split("_")[1] for k in kohya} == {"unet", "te1", "te2"}, sorted(kohya)[:5]
    # sd-scripts' SDXL names: the UNet's layers by the single file's module paths.
    unet_keys = [k for k in kohya if k.startswith("lora_unet_")]
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya, unet_keys[:5]
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_k.alpha" in kohya, unet_keys[:5]
    assert not any(k.startswith(("lora_unet_down_blocks_", "lora_unet_up_blocks_")) for k in unet_keys)

    prompt, seed, steps = "a photo of sks dog", 6, 4
    reference = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    reference.set_progress_bar_config(disable=True)

    def diffusers_image(lora=None):
        pipe = reference
        pipe.unload_lora_weights()
        if lora is not None:
            pipe.load_lora_weights(lora)
        with torch.no_grad():
            image = pipe(prompt, width=R, height=R, num_inference_steps=steps, guidance_scale=7.5,
                         generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
        return (image * 255).round().astype(np.uint8)

    def ours(lora, name):
        run_sdtune("generate", "--model", folder, "--prompt", prompt, "--lora", lora, "--width", R, "--height", R,
                   "--steps", steps, "--seed", seed, "--out", tmp_path / name, "--quiet")
        return np.asarray(Image.open(tmp_path / name).convert("RGB"))

    base = diffusers_image()
    for lora in (out / "pytorch_lora_weights.safetensors", out / "lora_kohya.safetensors"):
        theirs = diffusers_image(lora)
        assert_same_image(ours(lora, lora.stem + ".png"), theirs)
        # The LoRA changed the picture: the comparison above is not the base model's twice.
        assert np.abs(theirs.astype(int) - base.astype(int)).max() > 8, lora.name

    # A kohya SDXL file with diffusers' module names for the UNet (as other tools write them) is
    # the same LoRA: alpha = rank, as the run's.
    renamed = {}
    for key, value in layers.items():
        component, rest = key.split(".", 1)
        module, part = rest.rsplit(".lora_", 1)
        name = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component]
        name += module.replace(".", "_")
        renamed[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value
        renamed[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(renamed, tmp_path / "diffusers_named_kohya.safetensors")
    assert np.array_equal(ours(tmp_path / "diffusers_named_kohya.safetensors", "renamed.png"),
                          ours(out / "lora_kohya.safetensors", "kohya_again.png"))
