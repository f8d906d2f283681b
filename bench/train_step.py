"""Training-step time: sdtune against diffusers on the same weights, inputs and machine, in one run.

One step, on both sides: x_t = DDPM add_noise(x0, eps, t), UNet forward in train mode with
encoder_hidden_states, the epsilon MSE loss of diffusers' train_text_to_image.py, backward,
AdamW (fused kernel, lr 1e-5, weight decay 1e-2) and zero_grad. Mixed precision (bf16/fp16) is
autocast around forward and loss with float32 master weights, as accelerate does it (no loss scaler
on either side). Gradient checkpointing, when asked, on both sides.

--config scaled (default): an SD 1.5-shaped UNet scaled down for a CPU (channels
[160,320,640,640]), 32x32 latents. --config sd15: SD 1.5's exact UNet, 64x64 latents (512x512).
--config sdxl-scaled: SDXL's UNet scaled down for a CPU (channels [160,320,640], transformer
depths [1,2,4]), 32x32 latents; --config sdxl: SDXL base's UNet, 128x128 latents (1024x1024); both
with the pooled text vector and time ids.
The random-weight model folder is created once (seed 0) and reused. Prints seconds per step for
both (mean and median over --iters timed steps after --warmup), the ratio diffusers / sdtune of the
medians (> 1 means sdtune is faster), images/s, peak GPU memory, and the loss of the first step on
both sides (the same weights and inputs: it should agree to ~1e-5 relative in fp32). --rounds R
alternates the two sides R times and pools the timed steps, for a machine shared with other work.

--diffusers-compile adds a third side: diffusers' UNet under torch.compile (Inductor, compiled in
the warm-up steps, which are not timed: give it --warmup 3). --flops counts one diffusers step's FLOPs with torch's
FlopCounterMode (forward, backward; the optimizer adds none that it counts) and prints TFLOP per
image, achieved TFLOP/s and the model FLOP utilisation against --peak-tflops (default: 989.4, the
H100/H200 dense bf16 figure, on CUDA). --profile DIR: sdtune's step under PyTorch's profiler, its
Chrome trace in DIR and its time by category printed.

    python3 bench/train_step.py                       # CPU: scaled, batch 2, fp32, 2 + 5 steps
    python3 bench/train_step.py --device cuda --config sd15 --mixed-precision bf16 --batch 8 \
        [--gradient-checkpointing]
"""

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))

from tiny_models import SD15_UNET, SDXL_UNET, SDXL_UNET_SCALED  # noqa: E402

SCALED = dict(SD15_UNET, block_out_channels=[160, 320, 640, 640], sample_size=32)
CONFIGS = {"scaled": SCALED, "sd15": SD15_UNET, "sdxl-scaled": SDXL_UNET_SCALED, "sdxl": SDXL_UNET}
SHAPES = {"scaled": "SD 1.5-shaped UNet, channels [160,320,640,640]", "sd15": "SD 1.5 UNet",
          "sdxl-scaled": "SDXL-shaped UNet, channels [160,320,640], depths [1,2,4]", "sdxl": "SDXL UNet"}
# SD 1.5's noise schedule, as the DDPMScheduler of the training scripts: its alphas_cumprod make x_t.
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, steps_offset=1,
)


def model_folder(config_name, folder):
    """A pipeline folder with unet/ (random weights, seed 0) and scheduler/; made once, then reused."""
    if (folder / "model_index.json").exists():
        return folder
    from diffusers import DDPMScheduler, UNet2DConditionModel

    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(0)
    UNet2DConditionModel(**CONFIGS[config_name]).save_pretrained(partial / "unet")
    DDPMScheduler(**SD15_SCHEDULER).save_pretrained(partial / "scheduler")
    (partial / "model_index.json").write_text(json.dumps(
        {"unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        partial.rename(folder)
    except OSError:  # another run made it first
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def make_inputs(config, batch, latent):
    g = torch.Generator().manual_seed(0)
    return {
        "latents": torch.randn(batch, config["in_channels"], latent, latent, generator=g),
        "noise": torch.randn(batch, config["in_channels"], latent, latent, generator=g),
        "timesteps": torch.randint(0, SD15_SCHEDULER["num_train_timesteps"], (batch,), generator=g),
        "encoder_hidden_states": torch.randn(batch, 77, config["cross_attention_dim"], generator=g),
        # SDXL: the pooled text vector and 1024² size/crop time ids (both sides read them from here).
        **({"text_embeds": torch.randn(batch, config["projection_class_embeddings_input_dim"]
                                       - 6 * config["addition_time_embed_dim"], generator=g),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch)}
           if config.get("addition_embed_type") == "text_time" else {}),
    }


def time_steps(step, warmup, iters, sync):
    """Runs warmup + iters steps; returns the seconds of each timed step and every step's loss."""
    losses, seconds = [], []
    for _ in range(warmup):
        losses.append(step())
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        losses.append(step())
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds, [loss.item() for loss in losses]


class DiffusersTrainer:
    """diffusers' UNet in train mode with torch's fused AdamW, stepping on one fixed batch."""

    def __init__(self, folder, inputs, args, autocast_dtype, compile=False):
        from diffusers import DDPMScheduler, UNet2DConditionModel

        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").to(self.device).train()
        if args.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.model = torch.compile(self.unet) if compile else self.unet
        self.scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        if args.optimizer == "adafactor":  # kohya's SDXL settings, as sdtune_bench_train_step's
            from transformers.optimization import Adafactor

            self.optimizer = Adafactor(self.unet.parameters(), lr=1e-5, scale_parameter=False, relative_step=False)
        else:
            self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-5, weight_decay=1e-2, fused=True)
        self.inputs = {k: v.to(self.device) for k, v in inputs.items()}
        self.autocast_dtype = autocast_dtype

    def step(self):
        latents, noise, timesteps = (self.inputs[k] for k in ("latents", "noise", "timesteps"))
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            added = ({"text_embeds": self.inputs["text_embeds"], "time_ids": self.inputs["time_ids"]}
                     if "time_ids" in self.inputs else None)
            model_pred = self.model(noisy, timesteps, self.inputs["encoder_hidden_states"], added_cond_kwargs=added,
                                   return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def close(self):
        """Frees the model and optimizer (for sdtune's process on the same device); returns peak bytes."""
        peak = torch.cuda.max_memory_allocated() if self.cuda else None
        del self.unet, self.model, self.optimizer
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        return peak


def count_flops(trainer):
    """FLOPs of one training step, as torch's FlopCounterMode counts them (matmuls, convolutions,
    attention; forward and backward, recomputation included)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.step()
    trainer.sync()
    return counter.get_total_flops()


def sdtune_run(binary, folder, inputs_file, args):
    cmd = [str(binary), "--model", str(folder), "--inputs", str(inputs_file), "--batch", str(args.batch),
           "--device", args.device, "--mixed-precision", args.mixed_precision, "--warmup", str(args.warmup),
           "--iters", str(args.iters), "--threads", str(args.threads)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if args.deterministic:
        cmd.append("--deterministic")
    cmd += ["--optimizer", args.optimizer]
    if args.channels_last:
        cmd.append("--channels-last")
    cmd += ["--attention-backend", args.attention_backend]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        cmd += ["--profile", str(args.profile / f"train_step_{args.config}_b{args.batch}.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:  # the error line, not LibTorch's stack trace
        return dict(error=f"exit {proc.returncode}: {(proc.stderr.strip() or '?').splitlines()[0]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return dict(seconds=out["step_seconds"], losses=out["losses"], peak=out.get("peak_memory_bytes"),
                profile=out.get("profile"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--config", default="scaled", choices=sorted(CONFIGS), help="UNet (default scaled)")
    ap.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"], help="autocast (default no)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "adafactor"],
                    help="adamw (fused), or adafactor (transformers', lr 1e-5, no relative steps or scaling)")
    ap.add_argument("--deterministic", action="store_true",
                    help="deterministic kernels on both sides (torch.use_deterministic_algorithms, "
                         "cuDNN deterministic, CUBLAS_WORKSPACE_CONFIG=:4096:8; sdtune --deterministic)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--iters", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate diffusers and sdtune this many times, iters steps each (default 1)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help=f"CPU threads, both sides (default torch's, {torch.get_num_threads()})")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="the random-weight folder, made if absent (default $TMPDIR/sdtune_bench/train_step_CONFIG)")
    ap.add_argument("--bin", default=os.environ.get("SDTUNE_BENCH_TRAIN_STEP",
                                                    REPO / "build" / "sdtune_bench_train_step"),
                    help="sdtune_bench_train_step (default build/, or $SDTUNE_BENCH_TRAIN_STEP)")
    ap.add_argument("--diffusers-compile", action="store_true", help="also diffusers' UNet under torch.compile")
    ap.add_argument("--flops", action="store_true", help="count FLOPs per image; print TFLOP/s and MFU")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense peak for MFU (default on CUDA: 989.4, H100/H200 bf16)")
    ap.add_argument("--profile", type=Path, default=None, help="sdtune's step profiled: Chrome trace into DIR")
    ap.add_argument("--channels-last", action="store_true", help="sdtune's convolutions in NHWC")
    ap.add_argument("--attention-backend", default="auto", help="sdtune's SDPA kernel tried first")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.deterministic:  # before the first CUDA operation, as sdtune does it
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    config = CONFIGS[args.config]
    latent = config["sample_size"]
    autocast_dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    folder = model_folder(args.config, args.model_dir or
                          Path(tempfile.gettempdir()) / "sdtune_bench" / f"train_step_{args.config}")
    inputs = make_inputs(config, args.batch, latent)

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        inputs_file = Path(d) / "inputs.safetensors"
        save_file({k: v.contiguous() for k, v in inputs.items()}, inputs_file)
        # Round r: diffusers steps, then one sdtune process (it warms up again every round; the
        # diffusers model keeps training, warmed up once). Steps of all rounds are pooled, so that
        # a load spike on a shared machine falls on both sides.
        results = {name: dict(seconds=[], losses=None, peak=None) for name in ("diffusers", "sdtune")}
        flops = None
        trainer = DiffusersTrainer(folder, inputs, args, autocast_dtype)
        for r in range(args.rounds):
            seconds, losses = time_steps(trainer.step, args.warmup if r == 0 else 0, args.iters, trainer.sync)
            results["diffusers"]["seconds"] += seconds
            results["diffusers"]["losses"] = results["diffusers"]["losses"] or losses
            if r == args.rounds - 1:
                flops = count_flops(trainer) if args.flops else None
                results["diffusers"]["peak"] = trainer.close()
            elif trainer.cuda:
                torch.cuda.empty_cache()
            ours = sdtune_run(args.bin, folder, inputs_file, args)
            if "error" in ours:
                results["sdtune"] = ours
                break
            results["sdtune"]["seconds"] += ours["seconds"]
            results["sdtune"]["losses"] = results["sdtune"]["losses"] or ours["losses"]
            results["sdtune"]["peak"] = max(results["sdtune"]["peak"] or 0, ours["peak"] or 0) or None
            results["sdtune"]["profile"] = ours["profile"]
        if args.diffusers_compile:
            compiled = DiffusersTrainer(folder, inputs, args, autocast_dtype, compile=True)
            started = time.perf_counter()
            seconds, losses = time_steps(compiled.step, args.warmup, args.iters, compiled.sync)
            print(f"  (diffusers + torch.compile: compiling and {args.warmup + args.iters} steps took "
                  f"{time.perf_counter() - started:.0f} s)")
            results["diffusers compiled"] = dict(seconds=seconds, losses=losses, peak=compiled.close())

    cuda = args.device == "cuda"
    where = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} threads"
    shape = SHAPES[args.config]
    checkpointing = ", gradient checkpointing" if args.gradient_checkpointing else ""
    checkpointing += ", deterministic kernels" if args.deterministic else ""
    checkpointing += ", sdtune channels-last" if args.channels_last else ""
    checkpointing += f", sdtune attention {args.attention_backend} first" if args.attention_backend != "auto" else ""
    precision = "fp32" if autocast_dtype is None else f"{args.mixed_precision} autocast"
    print(f"training step ({shape}, batch {args.batch}, latent {latent}x{latent}, {precision}{checkpointing}, "
          f"{'AdamW fused' if args.optimizer == 'adamw' else 'Adafactor'}, {where}; {args.warmup} warmup + {args.iters} timed steps"
          f"{f' x {args.rounds} rounds' if args.rounds > 1 else ''})")
    print(f"  {'':20}{'s/step mean':>12}{'s/step median':>15}{'images/s':>10}{'peak memory':>13}"
          f"{'loss step 1':>14}{f'step {args.warmup + args.iters}':>14}")
    median = {}
    for name, r in results.items():
        if "error" in r:
            print(f"  {name:20}failed, {r['error']}")
            continue
        median[name] = statistics.median(r["seconds"])
        peak = f"{r['peak'] / 2**30:.2f} GiB" if r["peak"] is not None else "-"
        print(f"  {name:20}{statistics.mean(r['seconds']):12.4f}{median[name]:15.4f}"
              f"{args.batch / median[name]:10.2f}{peak:>13}{r['losses'][0]:14.7f}{r['losses'][-1]:14.7f}")
    if "sdtune" not in median or "diffusers" not in median:
        sys.exit(1)
    for name in median:
        if name != "sdtune":
            print(f"  ratio {name}/sdtune (median s/step) = {median[name] / median['sdtune']:.3f}")
    if flops:
        per_image = flops / args.batch
        peak = args.peak_tflops or (989.4 if cuda else None)
        print(f"  FLOPs (torch's FlopCounterMode, one diffusers step): {per_image / 1e12:.3f} TFLOP per image")
        for name, m in median.items():
            achieved = per_image * args.batch / m / 1e12
            mfu = f", MFU {100 * achieved / peak:.1f}% of {peak:g}" if peak else ""
            print(f"    {name:20}{achieved:9.1f} TFLOP/s{mfu}")
    p = results["sdtune"].get("profile")
    if p:
        busy = p["busy_seconds"] or 1
        print(f"  sdtune profile of one step ({p['timeline']}; span {p['span_seconds'] * 1e3:.1f} ms, "
              f"idle {p['idle_seconds'] * 1e3:.1f} ms, {p['kernel_launches']} kernels, {p['host_syncs']} host syncs):")
        for c in p["categories"]:
            print(f"    {c['category']:15}{c['seconds'] * 1e3:10.2f} ms {100 * c['seconds'] / busy:6.1f}%")
    ref, ours = results["diffusers"]["losses"][0], results["sdtune"]["losses"][0]
    print(f"  first-step loss: |sdtune - diffusers| / diffusers = {abs(ours - ref) / abs(ref):.2e}")


if __name__ == "__main__":
    main()
