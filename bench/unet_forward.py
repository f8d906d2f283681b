"""UNet forward time: sdtune against diffusers on the same weights, inputs and machine, in one run.

CPU (default): an SD 1.5-shaped UNet scaled down to run on a laptop-class CPU (channels
[160,320,640,640], 8 heads, cross-attention 768), batch 2 (classifier-free guidance), 32x32
latents (256x256 images). GPU (--device cuda): SD 1.5's exact UNet, 64x64 latents (512x512),
fp16, batch 2. --sdxl: SDXL's UNet instead (on the CPU scaled down: channels [160,320,640],
transformer depths [1,2,4]; on the GPU SDXL base's, 128x128 latents), with its pooled text vector
and size/crop time ids. Prints seconds per forward for both and the ratio diffusers / sdtune (> 1 means
sdtune is faster). --channels-last adds both sides with their convolutions in NHWC (diffusers:
unet.to(memory_format=torch.channels_last), its speed guide's advice; sdtune: --channels-last).

    python3 bench/unet_forward.py [--device cuda --dtype fp16 --sd15] [--iters N]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))

from tiny_models import SD15_UNET, SDXL_UNET, SDXL_UNET_SCALED  # noqa: E402

SCALED = dict(SD15_UNET, block_out_channels=[160, 320, 640, 640], sample_size=32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--sd15", action="store_true", help="SD 1.5's exact UNet (default on cuda)")
    ap.add_argument("--sdxl", action="store_true", help="SDXL's UNet (scaled down on the CPU)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--latent", type=int, default=None, help="latent side (default 32 cpu, 64 cuda)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true", help="also both sides in NHWC")
    ap.add_argument("--attention-backends", default="",
                    help="also sdtune with each of these SDPA kernels first (comma-separated, e.g. cudnn,efficient)")
    ap.add_argument("--bin", default=os.environ.get("SDTUNE_BENCH_UNET", REPO / "build" / "sdtune_bench_unet"))
    args = ap.parse_args()
    cuda = args.device == "cuda"
    latent = args.latent or ((128 if args.sdxl else 64) if cuda else 32)
    config = SD15_UNET if (args.sd15 or cuda) else SCALED
    if args.sdxl:
        config = SDXL_UNET if cuda else SDXL_UNET_SCALED
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
        unet.save_pretrained(folder / "unet")
        if cuda or dtype != torch.float32:
            unet = unet.to(args.device, dtype)
        sample = torch.randn(args.batch, 4, latent, latent, device=args.device, dtype=dtype)
        context = torch.randn(args.batch, 77, config["cross_attention_dim"], device=args.device, dtype=dtype)
        t = torch.full((args.batch,), 500, device=args.device)
        added = None
        if config.get("addition_embed_type") == "text_time":  # as the C++ side makes them
            text_dim = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
            added = {"text_embeds": torch.randn(args.batch, text_dim, device=args.device, dtype=dtype),
                     "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * args.batch,
                                              device=args.device)}

        def sync():
            if cuda:
                torch.cuda.synchronize()

        def time_diffusers():
            with torch.inference_mode():
                for _ in range(args.warmup):
                    unet(sample, t, context, added_cond_kwargs=added)
                sync()
                start = time.perf_counter()
                for _ in range(args.iters):
                    unet(sample, t, context, added_cond_kwargs=added)
                sync()
                return (time.perf_counter() - start) / args.iters

        rows = {"diffusers": time_diffusers()}
        if args.channels_last:
            unet = unet.to(memory_format=torch.channels_last)
            sample = sample.to(memory_format=torch.channels_last)
            rows["diffusers channels_last"] = time_diffusers()
        del unet
        if cuda:
            torch.cuda.empty_cache()

        variants = [("sdtune", [])]
        if args.channels_last:
            variants.append(("sdtune --channels-last", ["--channels-last"]))
        for backend in filter(None, args.attention_backends.split(",")):
            variants.append((f"sdtune attention {backend}", ["--attention-backend", backend]))
        for name, flags in variants:
            out = subprocess.run(
                [str(args.bin), str(folder), args.device, args.dtype, str(args.batch), str(latent), str(latent),
                 str(args.warmup), str(args.iters), *flags], capture_output=True, text=True, check=True)
            rows[name] = json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_forward"]

    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    shape = {id(SD15_UNET): "SD 1.5 UNet", id(SDXL_UNET): "SDXL UNet",
             id(SDXL_UNET_SCALED): "SDXL-shaped UNet, channels [160,320,640], depths [1,2,4]"}.get(
        id(config), "SD 1.5-shaped UNet, channels [160,320,640,640]")
    print(f"unet forward ({shape}, batch {args.batch}, latent {latent}x{latent}, {args.dtype}, {where})")
    for name, seconds in rows.items():
        print(f"  {name:28}{seconds:.4f} s/forward")
    print(f"  ratio diffusers/sdtune = {rows['diffusers'] / rows['sdtune']:.3f}")
    if args.channels_last:
        print(f"  ratio diffusers channels_last/sdtune --channels-last = "
              f"{rows['diffusers channels_last'] / rows['sdtune --channels-last']:.3f}")
        print(f"  sdtune: plain/--channels-last = {rows['sdtune'] / rows['sdtune --channels-last']:.3f}")


if __name__ == "__main__":
    main()
