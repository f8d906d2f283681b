"""Seconds per denoising step of text-to-image generation: sdtune against diffusers, same weights,
prompt, scheduler, seed and machine, in one run.

CPU (default): an SD 1.5-shaped pipeline scaled down to run on a small CPU (UNet channels
[160,320,640,640], VAE channels [64,128,256,256], SD 1.5's text encoder), 256x256, guidance 7.5
(batch 2 through the UNet), PNDM, 10 steps, fp32. GPU (--device cuda): SD 1.5's exact configs,
512x512, fp16, batch 1, 30 steps. The denoising loop alone is timed on both sides (diffusers:
from the first to the last step callback; sdtune: its own "s/step" summary, measured the same way).

    python3 bench/generate.py [--device cuda --dtype fp16] [--steps N]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))

import tiny_models  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--bin", default=os.environ.get("SDTUNE_BIN", REPO / "build" / "sdtune"))
    args = ap.parse_args()
    cuda = args.device == "cuda"
    dtype_name = args.dtype or ("fp16" if cuda else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    steps = args.steps or (30 if cuda else 10)
    size = 512 if cuda else 256
    if not cuda:  # SD 1.5's shape, scaled down
        tiny_models.CONFIGS["bench"] = dict(
            unet=dict(tiny_models.SD15_UNET, block_out_channels=[160, 320, 640, 640], sample_size=size // 8),
            vae=dict(tiny_models.SD15_VAE, block_out_channels=[64, 128, 256, 256]),
            text=tiny_models.SD15_TEXT, pad=tiny_models.SD1_PAD)
    kind = "sd15" if cuda else "bench"
    prompt, seed = "Yoda ninja portrait", 1

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "model"
        pipe = tiny_models.build_pipeline(kind, folder).to(args.device, dtype)
        stamps = []

        def on_step(p, i, t, kw):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            return kw

        # Both sides are timed the same way, in a fresh process each: from the end of the first
        # denoising step to the end of the last (first-call warm-up, prompt encoding and VAE
        # decoding left out).
        with torch.inference_mode():
            pipe(prompt, num_inference_steps=steps, height=size, width=size, guidance_scale=7.5,
                 generator=torch.Generator("cpu").manual_seed(seed), callback_on_step_end=on_step)
        # n callbacks bracket n-1 full steps after the first.
        diffusers_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        del pipe

        out = subprocess.run(
            [str(args.bin), "generate", "--model", folder, "--prompt", prompt, "--steps", str(steps),
             "--seed", str(seed), "--width", str(size), "--height", str(size), "--device", args.device,
             "--dtype", dtype_name, "--out", str(Path(d) / "out.png")], capture_output=True, text=True, check=True)
        sdtune_s = float(re.search(r"\(([0-9.]+) s/step\)", out.stderr).group(1))

    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"generate: {kind} pipeline, {size}x{size}, {steps} steps PNDM, CFG 7.5, {dtype_name}, {where}")
    print(f"  diffusers {diffusers_s:.4f} s/step")
    print(f"  sdtune    {sdtune_s:.4f} s/step")
    print(f"  ratio diffusers/sdtune = {diffusers_s / sdtune_s:.3f}")


if __name__ == "__main__":
    main()
