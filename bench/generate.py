"""Text-to-image generation: sdtune against diffusers, same weights, prompt, scheduler, seed and
machine, in one run.

CPU (default): an SD 1.5-shaped pipeline scaled down to run on a small CPU (UNet channels
[160,320,640,640], VAE channels [64,128,256,256], SD 1.5's text encoder), 256x256, guidance 7.5
(batch 2 through the UNet), PNDM, 10 steps, fp32. GPU (--device cuda): SD 1.5's exact configs,
512x512, fp16, batch 1, 30 steps.

Default: the denoising loop alone, seconds per step on both sides (diffusers: from the first to
the last step callback; sdtune: its own "s/step" summary, measured the same way).

--end-to-end: what a user waits for, prompt encoding + loop + VAE decode up to the image in host
memory, after one warm-up generation in the same process (sdtune generate --benchmark), median
of --runs. With --compile, diffusers is also run with its UNet and VAE decoder under
torch.compile (--compile-mode, default reduce-overhead: Inductor plus CUDA graphs, as diffusers'
own speed guide does it); compilation happens in warm-up runs, which are not timed.
--profile DIR also writes sdtune's Chrome trace and prints where its time goes.

    python3 bench/generate.py [--device cuda --dtype fp16] [--steps N]
    python3 bench/generate.py --device cuda --end-to-end --steps 50 [--compile] [--profile DIR]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))

import tiny_models  # noqa: E402

PROMPT, SEED = "Yoda ninja portrait", 1


def sync(cuda):
    if cuda:
        torch.cuda.synchronize()


def diffusers_loop_seconds(pipe, steps, size, cuda):
    """Seconds per denoising step, from the end of the first step to the end of the last."""
    stamps = []

    def on_step(p, i, t, kw):
        sync(cuda)
        stamps.append(time.perf_counter())
        return kw

    with torch.inference_mode():
        pipe(PROMPT, num_inference_steps=steps, height=size, width=size, guidance_scale=7.5,
             generator=torch.Generator("cpu").manual_seed(SEED), callback_on_step_end=on_step)
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # n callbacks bracket n-1 steps


def diffusers_end_to_end(pipe, steps, size, cuda, warmup, runs):
    """Median seconds of whole generations (to a numpy image in host memory) after `warmup` ones."""
    def once():
        sync(cuda)
        start = time.perf_counter()
        with torch.inference_mode():
            pipe(PROMPT, num_inference_steps=steps, height=size, width=size, guidance_scale=7.5,
                 generator=torch.Generator("cpu").manual_seed(SEED), output_type="np")
        sync(cuda)
        return time.perf_counter() - start

    for _ in range(warmup):
        once()
    return statistics.median(once() for _ in range(runs))


def sdtune_generate(args, folder, out, steps, size, dtype_name, extra=()):
    cmd = [str(args.bin), "generate", "--model", folder, "--prompt", PROMPT, "--steps", str(steps),
           "--seed", str(SEED), "--width", str(size), "--height", str(size), "--device", args.device,
           "--dtype", dtype_name, "--out", str(out), *extra]
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--end-to-end", action="store_true", help="whole generations, not the loop's s/step")
    ap.add_argument("--runs", type=int, default=3, help="--end-to-end: timed generations per side (default 3)")
    ap.add_argument("--compile", action="store_true", help="--end-to-end: also diffusers under torch.compile")
    ap.add_argument("--compile-mode", default="reduce-overhead")
    ap.add_argument("--profile", type=Path, default=None, help="--end-to-end: sdtune's Chrome trace into DIR")
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
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "model"
        pipe = tiny_models.build_pipeline(kind, folder).to(args.device, dtype)
        pipe.set_progress_bar_config(disable=True)
        if not args.end_to_end:
            diffusers_s = diffusers_loop_seconds(pipe, steps, size, cuda)
            del pipe
            out = sdtune_generate(args, folder, Path(d) / "out.png", steps, size, dtype_name)
            sdtune_s = float(re.search(r"\(([0-9.]+) s/step\)", out.stderr).group(1))
            print(f"generate: {kind} pipeline, {size}x{size}, {steps} steps PNDM, CFG 7.5, {dtype_name}, {where}")
            print(f"  diffusers {diffusers_s:.4f} s/step")
            print(f"  sdtune    {sdtune_s:.4f} s/step")
            print(f"  ratio diffusers/sdtune = {diffusers_s / sdtune_s:.3f}")
            return

        rows = {"diffusers eager": diffusers_end_to_end(pipe, steps, size, cuda, 1, args.runs)}
        if args.compile:
            pipe.unet = torch.compile(pipe.unet, mode=args.compile_mode, fullgraph=True)
            pipe.vae.decode = torch.compile(pipe.vae.decode, mode=args.compile_mode)
            started = time.perf_counter()
            rows[f"diffusers torch.compile ({args.compile_mode})"] = diffusers_end_to_end(
                pipe, steps, size, cuda, 2, args.runs)
            print(f"  (diffusers: compiling and {args.runs + 2} generations took {time.perf_counter() - started:.0f} s)")
        del pipe
        if cuda:
            torch.cuda.empty_cache()
        # sdtune: the plain path, and on CUDA the fast paths, each checked against the plain image.
        variants = {"sdtune": []}
        if cuda:
            variants["sdtune --cuda-graph"] = ["--cuda-graph"]
            variants["sdtune --cuda-graph --channels-last"] = ["--cuda-graph", "--channels-last"]
        images, results = {}, {}
        for name, flags in variants.items():
            extra = ["--benchmark", args.runs, *flags]
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                tag = "_".join(f.strip("-") for f in flags) or "plain"
                extra += ["--profile", args.profile / f"generate_{tag}_trace.json"]
            png = Path(d) / f"out_{len(images)}.png"
            out = sdtune_generate(args, folder, png, steps, size, dtype_name, extra)
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            rows[name] = results[name]["end_to_end_seconds_median"]
            images[name] = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)

    print(f"generate end to end: {kind} pipeline, {size}x{size}, {steps} steps PNDM, CFG 7.5, batch 1, {dtype_name}, "
          f"{where}; text encoder + loop + VAE decode, median of {args.runs} after warm-up")
    for name, seconds in rows.items():
        print(f"  {name:44}{seconds:9.3f} s")
    for name, r in results.items():
        print(f"  {name}: steady loop {r['seconds_per_step_median'] * 1e3:.2f} ms/step")
    for name, seconds in rows.items():
        if name != "sdtune":
            print(f"  ratio {name}/sdtune = {seconds / rows['sdtune']:.3f}")
    for name, image in images.items():
        if name != "sdtune":  # fast paths against the plain one: the same image within fp16 rounding
            diff = np.abs(image - images["sdtune"])
            print(f"  {name} vs sdtune image: max |diff| {diff.max()} levels, "
                  f"{100 * (diff <= 1).mean():.2f}% of values within 1 level")
    for name, r in results.items():
        if "profile" not in r:
            continue
        p = r["profile"]
        busy = p["busy_seconds"] or 1
        print(f"  {name} profile of one generation ({p['timeline']}; span {p['span_seconds'] * 1e3:.1f} ms, "
              f"idle {p['idle_seconds'] * 1e3:.1f} ms, {p['kernel_launches']} kernels, {p['host_syncs']} host syncs):")
        for c in p["categories"]:
            print(f"    {c['category']:15}{c['seconds'] * 1e3:10.2f} ms {100 * c['seconds'] / busy:6.1f}%")


if __name__ == "__main__":
    main()
