#!/usr/bin/env python3
"""LoRA against full fine-tuning on SD 1.5's UNet (exact config, random weights): trainable
parameters, optimizer state, peak resident memory (CPU) and peak allocated GPU memory, and step
time, each mode in its own process (sdtune_bench_train_step) so that peaks do not mix.

Full fine-tuning trains every UNet weight in float32 with AdamW (two float32 moments each); LoRA
freezes the UNet in the compute dtype and trains rank-R adapters on the attention projections
(to_q, to_k, to_v, to_out.0), as diffusers' train_dreambooth_lora.py / train_text_to_image_lora.py.

    python3 bench/lora_memory.py                       # CPU: 16x16 latents (128x128 images), batch 1
    python3 bench/lora_memory.py --device cuda --mixed-precision bf16 --latent 64 --batch 8
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from train_step import model_folder  # noqa: E402


def run(binary, folder, args, rank):
    cmd = [str(binary), "--model", str(folder), "--device", args.device, "--mixed-precision", args.mixed_precision,
           "--batch", str(args.batch), "--latent", str(args.latent), "--warmup", "1", "--iters", str(args.iters)]
    if rank:
        cmd += ["--lora-rank", str(rank)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--latent", type=int, default=16, help="latent side (image side / 8)")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--ranks", default="4,64", help="LoRA ranks to compare with full training")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--bin", default=os.environ.get("SDTUNE_BENCH_TRAIN_STEP",
                                                    REPO / "build" / "sdtune_bench_train_step"))
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sdtune_bench" / "sd15",
                    help="where the random SD 1.5 UNet folder is made once and reused")
    args = ap.parse_args()
    folder = model_folder("sd15", args.cache)
    gib, mib = 1 << 30, 1 << 20
    print(f"SD 1.5 UNet, {args.latent * 8}x{args.latent * 8} images ({args.latent}x{args.latent} latents), "
          f"batch {args.batch}, {args.device}, mixed precision {args.mixed_precision}"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}")
    header = "| mode | trainable parameters | optimizer state | RSS after the steps (peak incl. loading) | peak GPU allocated | s/step |"
    print(header)
    print("| --- | --- | --- | --- | --- | --- |")
    rows = [("full", 0)] + [(f"LoRA rank {r}", int(r)) for r in args.ranks.split(",") if r]
    for name, rank in rows:
        r = run(args.bin, folder, args, rank)
        gpu = f"{r['peak_memory_bytes'] / gib:.2f} GiB" if "peak_memory_bytes" in r else "-"
        print(f"| {name} | {r['trainable_parameters']:,} ({r['trainable_parameters'] / (r['trainable_parameters'] + r['frozen_parameters']):.2%}) "
              f"| {r['optimizer_state_bytes'] / mib:,.1f} MiB | {r.get('rss_after_steps_bytes', 0) / gib:.2f} GiB "
              f"({r['peak_rss_bytes'] / gib:.2f} GiB) | {gpu} "
              f"| {r['seconds_per_step_median']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
