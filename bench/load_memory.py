"""Peak resident memory of loading SD 1.5's UNet (random weights, 860M parameters), as a ratio to
the weights' size: `sdtune forward --component unet` on an 8x8 latent, whose activations are
negligible next to 3.4 GB of weights. The process's memory without the weights (the same command
on the tiny pipeline) is subtracted, so the ratio is what loading itself costs.

    python3 bench/load_memory.py [--sdtune build/sdtune] [--before OLD_BINARY] [--work DIR]

Cases: the UNet saved in fp32 and in fp16, loaded as fp32 (training) and as bf16. The module's own
weights are the floor (1.0 of the loaded size); the file's pages, an intermediate copy of the
state dict, and a dtype conversion are what loading can add on top."""

import argparse
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "helpers"))


def peak_rss(cmd):
    """The command's peak resident memory in bytes, measured in a fresh Python whose only child it is."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)")
    out = subprocess.run([sys.executable, "-c", probe, *map(str, cmd)], capture_output=True, text=True, check=True)
    rss_kib, code = out.stdout.split()
    if code != "0":
        raise SystemExit(f"failed ({code}): {' '.join(map(str, cmd))}")
    return int(rss_kib) * 1024


def pipelines(work):
    """{name: folder}: tiny (the baseline), sd15 with an fp32 UNet, sd15 with an fp16 UNet."""
    from tiny_models import build_pipeline

    folders = {"tiny": work / "tiny", "fp32": work / "sd15-fp32", "fp16": work / "sd15-fp16"}
    if not (folders["tiny"] / "model_index.json").exists():
        build_pipeline("tiny", folders["tiny"])
    if not (folders["fp32"] / "model_index.json").exists():
        print("building SD 1.5-sized random weights (a few minutes) ...", flush=True)
        build_pipeline("sd15", folders["fp32"])
    if not (folders["fp16"] / "model_index.json").exists():
        shutil.copytree(folders["fp32"], folders["fp16"], ignore=shutil.ignore_patterns("*.safetensors"))
        for component in ["vae", "text_encoder"]:
            for f in (folders["fp32"] / component).glob("*.safetensors"):
                shutil.copy(f, folders["fp16"] / component / f.name)
        unet = load_file(folders["fp32"] / "unet" / "diffusion_pytorch_model.safetensors")
        save_file({k: v.half() for k, v in unet.items()},
                  folders["fp16"] / "unet" / "diffusion_pytorch_model.safetensors")
    return folders


def inputs(work, cross_attention_dim):
    path = work / f"unet_inputs_{cross_attention_dim}.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"sample": torch.randn(1, 4, 8, 8, generator=g), "timestep": torch.tensor([500]),
               "encoder_hidden_states": torch.randn(1, 77, cross_attention_dim, generator=g)}, path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdtune", default=os.environ.get("SDTUNE_BIN", REPO / "build" / "sdtune"))
    ap.add_argument("--before", help="an older sdtune binary to compare with")
    ap.add_argument("--work", default="/tmp/sdtune-load-memory", help="where the random pipelines are kept")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    folders = pipelines(work)
    binaries = {"after": a.sdtune, **({"before": a.before} if a.before else {})}
    n_params = sum(t.numel() for t in load_file(folders["fp32"] / "unet" / "diffusion_pytorch_model.safetensors").values())

    def run(binary, folder, dtype, out):
        dim = 32 if folder == folders["tiny"] else 768
        return peak_rss([binary, "forward", "--model", folder, "--component", "unet", "--inputs", inputs(work, dim),
                         "--out", out, "--dtype", dtype])

    print(f"SD 1.5 UNet: {n_params / 1e6:.0f}M parameters")
    print(f"{'binary':8} {'file':5} {'as':5} {'weights MiB':>11} {'peak MiB':>9} {'base MiB':>9} {'ratio':>6}")
    for name, binary in binaries.items():
        for file_dtype in ["fp32", "fp16"]:
            for dtype, size in [("fp32", 4), ("bf16", 2)]:
                out = work / "out.safetensors"
                base = run(binary, folders["tiny"], dtype, out)
                out.unlink()
                peak = run(binary, folders[file_dtype], dtype, out)
                out.unlink()
                weights = n_params * size
                print(f"{name:8} {file_dtype:5} {dtype:5} {weights / 2**20:11.0f} {peak / 2**20:9.0f} "
                      f"{base / 2**20:9.0f} {(peak - base) / weights:6.2f}", flush=True)


if __name__ == "__main__":
    main()
