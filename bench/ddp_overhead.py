"""What the data-parallel path costs one rank: sdtune's training step (bench/train_step_bench.cpp)
plain, against the same step under `torchrun --nproc-per-node 1` through the data-parallel path
(a c10d process group of one; the gradient reducer packs every gradient into 25 MB buckets during
backward and all-reduces them; the loss is summed over the ranks), on the same weights, inputs
and machine, alternated round by round. The issue's bar on a GPU: at most 2% (NCCL).

It also prints the all-reduce volume per optimizer step (the trainable gradients, float32) and
what a ring all-reduce moves per GPU for N ranks, 2 (N - 1) / N of it, for docs/distributed.md's
scaling table.

    python3 bench/ddp_overhead.py                                    # CPU, Gloo, scaled UNet
    python3 bench/ddp_overhead.py --device cuda --config sd15 --mixed-precision bf16 --batch 8
    python3 bench/ddp_overhead.py ... --lora-rank 4
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from train_step import CONFIGS, model_folder  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="scaled", choices=sorted(CONFIGS))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--ddp-backend", default="", help="nccl or gloo (default: nccl on CUDA, gloo on CPU)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default LibTorch's)")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--bin", default=os.environ.get("SDTUNE_BENCH_TRAIN_STEP", REPO / "build" / "sdtune_bench_train_step"))
    args = ap.parse_args()
    folder = model_folder(args.config, args.model_dir or
                          Path(tempfile.gettempdir()) / "sdtune_bench" / f"train_step_{args.config}")
    step = [str(args.bin), "--model", str(folder), "--batch", str(args.batch), "--device", args.device,
            "--mixed-precision", args.mixed_precision, "--warmup", str(args.warmup), "--iters", str(args.iters),
            "--threads", str(args.threads), "--lora-rank", str(args.lora_rank)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    seconds = {"plain": [], "ddp": []}
    first_loss, info = {}, {}
    for _ in range(args.rounds):
        ddp = [sys.executable, "-m", "torch.distributed.run", "--no-python", "--nproc-per-node", "1",
               "--master-port", str(free_port()), *step, "--ddp",
               *(["--ddp-backend", args.ddp_backend] if args.ddp_backend else [])]
        for name, cmd in (("plain", step), ("ddp", ddp)):
            out = run(cmd, env)
            seconds[name] += out["step_seconds"]
            first_loss.setdefault(name, out["losses"][0])
            info[name] = out
    median = {k: statistics.median(v) for k, v in seconds.items()}
    d = info["ddp"]
    grad_bytes = d["trainable_parameters"] * 4
    print(f"data-parallel path, 1 rank ({d['ddp_backend']}) against the plain step: {args.config} UNet, "
          f"batch {args.batch}, {args.mixed_precision}, {'LoRA rank ' + str(args.lora_rank) if args.lora_rank else 'full'}, "
          f"{args.device}; {args.warmup} warmup + {args.iters} timed steps x {args.rounds} rounds")
    for name in ("plain", "ddp"):
        print(f"  {name:6} median {median[name]:.4f} s/step  mean {statistics.mean(seconds[name]):.4f}  "
              f"first loss {first_loss[name]:.7f}")
    print(f"  overhead (median): {100 * (median['ddp'] / median['plain'] - 1):+.2f}%")
    print(f"  buckets: {d['buckets']}, started during backward: {d['buckets_started_in_backward']}")
    print(f"  all-reduce per optimizer step: {grad_bytes / 1e6:.1f} MB of float32 gradients "
          f"({d['trainable_parameters']:,} trainable); a ring moves 2(N-1)/N of it per GPU: "
          f"{grad_bytes / 1e6:.1f} MB at N = 2, {1.75 * grad_bytes / 1e6:.1f} MB at N = 8")


if __name__ == "__main__":
    main()
