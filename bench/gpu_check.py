"""CUDA numerics of `sdtune forward` against diffusers/transformers on the same GPU.

fp32 must agree within 1e-3 (both sides at PyTorch's defaults: TF32 convolutions, fp32 matmuls);
fp16/bf16 are compared with diffusers running in the same precision and reported (not asserted:
kernels differ in accumulation order), next to the fp16/bf16 error of diffusers itself against
fp32.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))
from tiny_models import build_pipeline  # noqa: E402

BIN = os.environ.get("SDTUNE_BIN", str(REPO / "build" / "sdtune"))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def sdtune_forward(folder, component, dtype, tmp, **inputs):
    inp, out = Path(tmp) / "in.safetensors", Path(tmp) / "out.safetensors"
    save_file({k: v.contiguous().cpu() for k, v in inputs.items()}, inp)
    subprocess.run([BIN, "forward", "--model", folder, "--component", component, "--inputs", inp, "--out", out,
                    "--device", "cuda", "--dtype", dtype], check=True)
    return load_file(out)


def main():
    # PyTorch's defaults, which LibTorch (and so sdtune) shares: cuDNN convolutions may use TF32,
    # matmuls do not. (With TF32 convolutions off here only, the VAE differed by 1.4e-3.)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sd15"
        pipe = build_pipeline("sd15", folder)
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(2, 4, 64, 64, generator=g)
        context = torch.randn(2, 77, 768, generator=g)
        t = torch.tensor([999, 10])
        image = torch.rand(1, 3, 256, 256, generator=g) * 2 - 1
        ids = pipe.tokenizer(["Yoda ninja portrait", "a photo of a cat"], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        with torch.no_grad():
            pipe.to("cuda", torch.float32)
            ref32 = {
                "unet": pipe.unet(latents.cuda(), t.cuda(), context.cuda()).sample.float().cpu(),
                "vae-decoder": pipe.vae.decode(latents[:1].cuda() / 0.18215).sample.float().cpu(),
                "vae-encoder": pipe.vae.encode(image.cuda()).latent_dist.mean.float().cpu(),
                "text-encoder": pipe.text_encoder(ids.cuda()).last_hidden_state.float().cpu(),
            }
            for name, dt in DTYPES.items():
                pipe.to("cuda", dt)
                ref = {
                    "unet": pipe.unet(latents.cuda().to(dt), t.cuda(), context.cuda().to(dt)).sample.float().cpu(),
                    "vae-decoder": pipe.vae.decode(latents[:1].cuda().to(dt) / 0.18215).sample.float().cpu(),
                    "vae-encoder": pipe.vae.encode(image.cuda().to(dt)).latent_dist.mean.float().cpu(),
                    "text-encoder": pipe.text_encoder(ids.cuda()).last_hidden_state.float().cpu(),
                }
                ours = {
                    "unet": sdtune_forward(folder, "unet", name, tmp, sample=latents, timestep=t,
                                           encoder_hidden_states=context)["sample"],
                    "vae-decoder": sdtune_forward(folder, "vae-decoder", name, tmp, latents=latents[:1] / 0.18215)["sample"],
                    "vae-encoder": sdtune_forward(folder, "vae-encoder", name, tmp, sample=image)["mean"],
                    "text-encoder": sdtune_forward(folder, "text-encoder", name, tmp, input_ids=ids)["last_hidden_state"],
                }
                for comp in ours:
                    e_same, e_ref32, e_diff32 = rel(ours[comp], ref[comp]), rel(ours[comp], ref32[comp]), rel(ref[comp], ref32[comp])
                    ok = e_same <= 1e-3 if name == "fp32" else True
                    failures += not ok
                    print(f"{name} {comp:13s} vs diffusers-{name}: {e_same:.2e}   vs diffusers-fp32: {e_ref32:.2e}"
                          f"   (diffusers-{name} vs fp32: {e_diff32:.2e}){'' if ok else '  FAIL'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
