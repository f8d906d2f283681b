"""`sdtune train --device cuda` end to end on a tiny pipeline, for the GPU machine, whose sdtune is
built without libvips (bench/gpu_check.sh): the images reach the GPU run through the latent and
text caches that `--prepare` fills HERE, on the CPU, with the same model folder, data and settings.

    python3 bench/gpu_train_check.py --prepare .fixture      # here (needs build/sdtune), before
    python3 bench/gpu_train_check.py --run .fixture          # there, after the build

On the GPU, per precision (fp32, bf16, fp16): every cache entry must be read back (none computed),
losses must stay finite and fall, fp16 reports its loss scale and skipped steps; fp32 also checks
whether 6 steps straight equal 3 steps + resume + 3 steps bit for bit on CUDA, and that diffusers
loads the output and generates with it on the GPU.
"""

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRECISIONS = ["no", "bf16", "fp16"]
N_IMAGES, R = 8, 32


def train_args(fixture, out, precision, *extra):
    return ["train", "--model", fixture / "tiny", "--data", fixture / "data", "--out", out, "--resolution", R,
            "--center-crop", "--random-flip", "--batch-size", 4, "--learning-rate", 1e-3, "--lr-warmup-steps", 0,
            "--mixed-precision", precision, "--cache-latents", "--cache-text-encoder-outputs", "--cache-dir",
            fixture / "cache", "--checkpointing-steps", 0, "--seed", 11, "--quiet", *extra]


def sdtune(binary, args, check=True):
    cmd = [str(binary), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode < 0:  # killed by a signal: sdtune's crash report, resolved to source lines
        print(f"CRASH (signal {-proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-6000:]}")
        seen = set()
        for module, offset in re.findall(r"= (\S+)\+(0x[0-9a-f]+)", proc.stderr):
            if (module, offset) in seen or not shutil.which("addr2line"):
                continue
            seen.add((module, offset))
            where = subprocess.run(["addr2line", "-f", "-C", "-i", "-e", module, offset],
                                   capture_output=True, text=True).stdout.split("\n")
            print(f"  {Path(module).name}+{offset}: {' | '.join(l for l in where if l)[:300]}")
    if check and proc.returncode != 0:
        raise SystemExit(f"sdtune {' '.join(map(str, args[:1]))} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


def torchrun(binary, nproc, args):
    """`torchrun --no-python --nproc-per-node N sdtune ARGS` on a free local port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--no-python", "--nproc-per-node",
                           str(nproc), "--master-port", str(port), str(binary), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def compare_runs(a, b):
    """The largest per-tensor relative difference of two runs' UNets, and their mean s/step (the first
    step, which warms up, left out)."""
    from safetensors.torch import load_file

    ua, ub = (load_file(x / "unet/diffusion_pytorch_model.safetensors") for x in (a, b))
    rel = max(((ua[k].float() - ub[k].float()).norm() / ua[k].float().norm().clamp_min(1e-12)).item() for k in ua)
    sa, sb = ([x["step_seconds"] for x in losses(x)][1:] for x in (a, b))
    return rel, sum(sa) / len(sa), sum(sb) / len(sb)


def prepare(fixture, binary):
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests" / "helpers"))
    from tiny_models import build_pipeline

    build_pipeline("tiny", fixture / "tiny")
    data = fixture / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_IMAGES):
        # Smooth images (a colour gradient per image), which a tiny model can learn a little of.
        y, x = np.mgrid[0:40, 0:48]
        c = rng.uniform(0, 1, (3, 3))
        img = np.stack([(c[k, 0] * x / 48 + c[k, 1] * y / 40 + c[k, 2]) % 1.0 for k in range(3)], -1)
        Image.fromarray((img * 255).astype(np.uint8)).save(data / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"gradient number {i % 4}"})
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # One step per precision fills its caches (the VAE and text encoder run in that precision);
    # its output is not needed (the fixture travels, and must stay small).
    with tempfile.TemporaryDirectory() as tmp:
        for p in PRECISIONS:
            proc = sdtune(binary, train_args(fixture, Path(tmp) / p, p, "--max-steps", 1), check=False)
            print(p, "rc", proc.returncode, [l for l in proc.stdout.splitlines() if "cache" in l],
                  proc.stderr[-300:])
    entries = list((fixture / "cache").rglob("*.safetensors"))
    print(f"{len(entries)} cache entries in {fixture / 'cache'}")


def losses(out):
    return [json.loads(l) for l in (Path(out) / "logs" / "metrics.jsonl").read_text().splitlines()]


def run(fixture, binary, device):
    import torch
    from safetensors.torch import load_file

    print("device:", torch.cuda.get_device_name() if device == "cuda" else device)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "sdtune_gpu_train"
    shutil.rmtree(work, ignore_errors=True)
    failures = 0
    for p in PRECISIONS:
        out = work / f"cuda_{p}"
        start = time.time()
        proc = sdtune(binary, train_args(fixture, out, p, "--max-steps", 30, "--use-ema", "--device", device),
                      check=False)
        if proc.returncode != 0:
            print(f"{p}: FAIL rc {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
            failures += 1
            continue
        cache = [l for l in proc.stdout.splitlines() if "cache" in l]
        m = losses(out)
        good = [x["loss"] for x in m if isinstance(x["loss"], float) and math.isfinite(x["loss"])]
        first, last = sum(good[:5]) / 5, sum(good[-5:]) / 5
        skipped = sum(1 for x in m if x.get("skipped"))
        finite = len(good) + skipped >= len(m) and len(good) >= 20
        ok = finite and all("0 computed" in l for l in cache) and len(cache) == 2 and last < first
        failures += not ok
        scale = f", loss scale {m[-1].get('loss_scale')}" if p == "fp16" else ""
        print(f"{p}: {'ok' if ok else 'FAIL'}  {' | '.join(cache)}; loss mean of steps 1-5 {first:.4f} -> "
              f"26-30 {last:.4f}; skipped {skipped}{scale}; {time.time() - start:.1f} s incl. start")

    # Resume on CUDA: bitwise? cuDNN and atomics may make CUDA backward passes nondeterministic.
    # With and without EMA, so that a failure says which state's restore is at fault.
    # --deterministic (cuBLAS workspace, cuDNN, attention backward) should make both bitwise.
    lora = ["--lora-rank", 4, "--lora-dropout", 0.1]
    for ema, tag in ((["--use-ema"], "EMA"), ([], "no EMA"), (lora, "LoRA"),
                     (["--use-ema", "--deterministic"], "EMA, deterministic"),
                     ([*lora, "--deterministic"], "LoRA, deterministic")):
        a, b = work / f"straight-{tag}", work / f"resumed-{tag}"
        t = time.time()
        straight = sdtune(binary, train_args(fixture, a, "no", "--max-steps", 6, *ema, "--device", device), check=False)
        print(f"  {tag}: straight 6 steps {time.time() - t:.1f} s incl. start, rc {straight.returncode}"
              + (f": {straight.stderr.strip().splitlines()[-1:]}" if straight.returncode else ""))
        rcs = [straight.returncode,
               sdtune(binary, train_args(fixture, b, "no", "--max-steps", 3, *ema, "--device", device,
                                         "--checkpointing-steps", 3), check=False).returncode,
               sdtune(binary, train_args(fixture, b, "no", "--max-steps", 6, *ema, "--device", device,
                                         "--resume-from-checkpoint", "latest"), check=False).returncode]
        if "LoRA" in tag or "deterministic" in tag:  # the same run twice: how deterministic is CUDA here at all?
            again = work / f"again-{tag}"
            rcs.append(sdtune(binary, train_args(fixture, again, "no", "--max-steps", 6, *ema, "--device", device),
                              check=False).returncode)
        if any(rcs):
            print(f"resume on {device} (fp32, {tag}): FAIL, exit codes straight/first/resumed {rcs}")
            failures += 1
            continue
        weights = "pytorch_lora_weights.safetensors" if "LoRA" in tag else "unet/diffusion_pytorch_model.safetensors"
        ua, ub = (load_file(x / weights) for x in (a, b))
        worst = max((ua[k] - ub[k]).abs().max().item() for k in ua)
        if "LoRA" in tag or "deterministic" in tag:
            uc = load_file(work / f"again-{tag}" / weights)
            print(f"  {tag}: the straight run twice: bitwise equal: {all(torch.equal(ua[k], uc[k]) for k in ua)} "
                  f"(max |diff| {max((ua[k] - uc[k]).abs().max().item() for k in ua):.2e})")
        la, lb = [x["loss"] for x in losses(a)], [x["loss"] for x in losses(b)]
        print(f"resume on {device} (fp32, {tag}): weights bitwise equal: "
              f"{all(torch.equal(ua[k], ub[k]) for k in ua)} (max |diff| {worst:.2e}); "
              f"losses of steps 4-6 equal: {la[3:] == lb[-3:]}")

    # LoRA on CUDA in bf16: frozen bf16 UNet, fp32 adapters; the loss falls.
    out = work / "lora_bf16"
    proc = sdtune(binary, train_args(fixture, out, "bf16", "--max-steps", 30, "--lora-rank", 8, "--learning-rate",
                                     1e-2, "--device", device), check=False)
    m = [x["loss"] for x in losses(out)] if proc.returncode == 0 else []
    ok = len(m) == 30 and all(math.isfinite(x) for x in m) and sum(m[-5:]) < sum(m[:5])
    failures += not ok
    params = [l for l in proc.stdout.splitlines() if "trainable" in l]
    print(f"LoRA bf16 on {device}: {'ok' if ok else 'FAIL rc %d' % proc.returncode}; loss mean of steps 1-5 "
          f"{sum(m[:5]) / 5 if m else float('nan'):.4f} -> 26-30 {sum(m[-5:]) / 5 if m else float('nan'):.4f}; "
          f"{' '.join(params)}")

    # Data-parallel on CUDA tensors (Gloo, both ranks on this GPU): 2 ranks at batch 4 against one
    # process at batch 4 with accumulation 2; then the seconds per step of each.
    if device.startswith("cuda"):
        single, ranks = work / "ddp_single", work / "ddp_ranks"
        cuda0 = ["--max-steps", 6, "--device", "cuda:0"]
        rc1 = sdtune(binary, train_args(fixture, single, "no", *cuda0, "--gradient-accumulation-steps", 2),
                     check=False).returncode
        ddp = torchrun(binary, 2, train_args(fixture, ranks, "no", *cuda0, "--ddp-backend", "gloo"))
        if rc1 or ddp.returncode:
            failures += 1
            print(f"data-parallel on {device}: FAIL, exit codes one process {rc1}, 2 ranks {ddp.returncode}: "
                  f"{ddp.stderr.strip().splitlines()[-3:]}")
        else:
            rel, s1, s2 = compare_runs(single, ranks)
            print(f"data-parallel on {device} (Gloo, 2 ranks on one GPU): weights vs one process with accumulation 2: "
                  f"max relative diff {rel:.2e}; s/step one process {s1:.4f}, 2 ranks {s2:.4f}")

    # NCCL (the default on CUDA) with one rank: the trainer's data-parallel path on this GPU (one
    # GPU admits one NCCL rank) against the plain process, same settings.
    if device.startswith("cuda"):
        plain, nccl = work / "nccl_plain", work / "nccl_rank"
        rc1 = sdtune(binary, train_args(fixture, plain, "bf16", "--max-steps", 6, "--device", "cuda"),
                     check=False).returncode
        one = torchrun(binary, 1, train_args(fixture, nccl, "bf16", "--max-steps", 6, "--device", "cuda"))
        if rc1 or one.returncode:
            failures += 1
            print(f"NCCL, one rank: FAIL, exit codes plain {rc1}, torchrun {one.returncode}: "
                  f"{one.stderr.strip().splitlines()[-3:]}")
        else:
            rel, s1, s2 = compare_runs(plain, nccl)
            print(f"NCCL, one rank, bf16: weights vs the plain process: max relative diff {rel:.2e}; "
                  f"s/step plain {s1:.4f}, torchrun {s2:.4f}")

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(work / "cuda_no", safety_checker=None,
                                                   requires_safety_checker=False).to(device)
    image = pipe("gradient number 1", num_inference_steps=4, output_type="np",
                 generator=torch.Generator(device).manual_seed(0)).images[0]
    ok = image.shape == (R, R, 3) and bool((image == image).all())
    failures += not ok
    print(f"diffusers loads the CUDA-trained output and generates on the GPU: {'ok' if ok else 'FAIL'}")
    sys.exit(1 if failures else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", type=Path, metavar="DIR")
    mode.add_argument("--run", type=Path, metavar="DIR")
    ap.add_argument("--device", default="cuda", help="for --run (cpu: a dry run of this script)")
    ap.add_argument("--bin", default=os.environ.get("SDTUNE_BIN", REPO / "build" / "sdtune"))
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare.resolve(), args.bin)
    else:
        run(args.run.resolve(), args.bin, args.device)


if __name__ == "__main__":
    main()
