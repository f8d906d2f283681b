"""Peak resident memory of `sdtune convert` between a folder and a single file, as a ratio to the
weights' size, on SD 1.5-sized random weights (UNet, VAE and text encoder: 1.07 B parameters). The
issue's bound is about 1.3 times the weights. The same command on the tiny pipeline is subtracted
(the process without weights).

    python3 bench/single_file_memory.py [--sdtune build/sdtune] [--work DIR]

Cases: folder -> file (fp32, and --dtype fp16), file -> folder (fp32 file, and the fp16 file), the
fp32 file with its configs read from the tensors (no --config: they must equal the folder's), and a
PyTorch .ckpt of the fp16 weights (read through the restricted pickle machine).
The file's own pages count while they are read; writing goes through the page cache, which is
not the process's."""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from load_memory import peak_rss, pipelines  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdtune", default=os.environ.get("SDTUNE_BIN", REPO / "build" / "sdtune"))
    ap.add_argument("--work", default="/tmp/sdtune-load-memory", help="where the random pipelines are kept")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    folders = pipelines(work)
    out = work / "single-file"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()

    def weights(folder):
        return sum(f.stat().st_size for c in ("unet", "vae", "text_encoder") for f in (folder / c).glob("*.safetensors"))

    def convert(src, dst, *extra, config=None):
        cmd = [a.sdtune, "convert", src, dst, *extra, *(["--config", config] if config else [])]
        return peak_rss(cmd)

    base = convert(folders["tiny"], out / "tiny.safetensors")
    print(f"baseline (tiny pipeline): {base / 2**20:.0f} MiB")
    rows = []
    size = weights(folders["fp32"])
    rows.append(("folder -> file, fp32", convert(folders["fp32"], out / "fp32.safetensors"), size))
    half = out / "fp16.safetensors"
    rows.append(("folder -> file, --dtype fp16", convert(folders["fp32"], half, "--dtype", "fp16"), size))
    rows.append(("file (fp32) -> folder", convert(out / "fp32.safetensors", out / "back32", config=folders["fp32"]),
                 (out / "fp32.safetensors").stat().st_size))
    rows.append(("file (fp16) -> folder", convert(half, out / "back16", config=folders["fp32"]), half.stat().st_size))
    rows.append(("file (fp32) -> folder, --dtype fp16",
                 convert(out / "fp32.safetensors", out / "back32to16", "--dtype", "fp16", config=folders["fp32"]),
                 (out / "fp32.safetensors").stat().st_size))
    rows.append(("file (fp32) -> folder, no --config",
                 convert(out / "fp32.safetensors", out / "inferred"), (out / "fp32.safetensors").stat().st_size))
    for part in ("unet", "vae"):  # SD 1.5's configs, read from SD 1.5-shaped tensors
        ours = json.loads((out / "inferred" / part / "config.json").read_text())
        theirs = json.loads((folders["fp32"] / part / "config.json").read_text())
        differ = {k: (ours.get(k), v) for k, v in theirs.items() if not k.startswith("_") and k in ours
                  and ours[k] != v}
        print(f"inferred {part} config differs from the folder's in: {differ or 'nothing'}")
    ckpt = out / "fp16.ckpt"
    import torch
    from safetensors.torch import load_file
    torch.save({"state_dict": load_file(half), "global_step": 1}, ckpt)
    rows.append((".ckpt (fp16) -> folder", convert(ckpt, out / "from-ckpt"), ckpt.stat().st_size))
    print(f"{'case':36}{'weights':>12}{'peak RSS - baseline':>22}{'ratio':>8}")
    for name, peak, nbytes in rows:
        print(f"{name:36}{nbytes / 2**30:10.2f} GiB{(peak - base) / 2**30:18.2f} GiB{(peak - base) / nbytes:8.2f}")


if __name__ == "__main__":
    main()
