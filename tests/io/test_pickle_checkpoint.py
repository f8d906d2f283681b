"""PyTorch pickle checkpoints (.ckpt; src/io/pickle_checkpoint): read by a restricted machine that
builds tensors and plain values and never calls anything. A Lightning-style .ckpt reads as the
same model as its .safetensors twin; a pickle naming any other global is refused by name, and its
payload never runs; broken archives are named errors."""

import collections
import os
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file


def sdtune(sdtune_bin, *args):
    return subprocess.run([str(sdtune_bin), *map(str, args)], capture_output=True, text=True, timeout=300)


def single_file_state(pipeline, sdtune_bin, tmp_path, kind="file-sd1"):
    folder, _ = pipeline(kind)
    one = tmp_path / "one.safetensors"
    proc = sdtune(sdtune_bin, "convert", folder, one)
    assert proc.returncode == 0, proc.stderr
    return one, load_file(one)


def assert_same_folders(a, b):
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        sa, sb = load_file(a / part), load_file(b / part)
        assert sa.keys() == sb.keys(), part
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), (part, k)


def test_a_lightning_checkpoint_reads_as_its_safetensors_twin(pipeline, sdtune_bin, tmp_path):
    """What CompVis/Stability .ckpt files hold: the weights in an OrderedDict under "state_dict", beside
    global_step, epoch and callbacks with numpy scalars. Tensors that view one storage at offsets
    (torch.save keeps the sharing) and fp16 ones come back exact."""
    one, state = single_file_state(pipeline, sdtune_bin, tmp_path)
    sd = collections.OrderedDict((k, v.clone()) for k, v in state.items())
    # Two UNet tensors as views into one shared storage, the second at an offset and transposed back.
    a, b = "model.diffusion_model.out.2.weight", "model.diffusion_model.time_embed.0.weight"
    shared = torch.cat([sd[a].flatten(), sd[b].t().contiguous().flatten()])
    sd[a] = shared[: sd[a].numel()].view(sd[a].shape)
    sd[b] = shared[sd[a].numel():].view(sd[b].shape[1], sd[b].shape[0]).t()
    vae = "first_stage_model.decoder.conv_out.weight"
    sd[vae] = sd[vae].half()
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 470000, "epoch": 6, "pytorch-lightning_version": "1.4.2",
                "callbacks": {"ModelCheckpoint": {"best_model_score": np.float64(0.5), "dirpath": "/x"}}}, ckpt)

    twin = tmp_path / "twin.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, twin)
    for src, out in ((ckpt, tmp_path / "from-ckpt"), (twin, tmp_path / "from-safetensors")):
        proc = sdtune(sdtune_bin, "convert", src, out, "--dtype", "fp32")
        assert proc.returncode == 0, proc.stderr
    assert_same_folders(tmp_path / "from-ckpt", tmp_path / "from-safetensors")
    unet = load_file(tmp_path / "from-ckpt/unet/diffusion_pytorch_model.safetensors")
    assert torch.equal(unet["time_embedding.linear_1.weight"], state[b])


def test_a_bare_state_dict_and_generate_on_a_ckpt(pipeline, sdtune_bin, tmp_path):
    """torch.save(state_dict) without Lightning's wrapper; generate takes the .ckpt as --model."""
    one, state = single_file_state(pipeline, sdtune_bin, tmp_path)
    ckpt = tmp_path / "bare.ckpt"
    torch.save(state, ckpt)
    env = {**os.environ, "SDTUNE_CACHE_DIR": str(tmp_path / "cache")}
    outs = []
    for model in (one, ckpt):
        out = tmp_path / f"{model.stem}.png"
        proc = subprocess.run([str(sdtune_bin), "generate", "--model", str(model), "--prompt", "a circle", "--steps",
                               "2", "--seed", "1", "--width", "32", "--height", "32", "--out", str(out), "--quiet"],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        outs.append(np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out)))
    assert np.array_equal(outs[0], outs[1])
    proc = sdtune(sdtune_bin, "inspect", ckpt)
    assert proc.returncode == 0, proc.stderr
    assert "single-file checkpoint: SD 1.x (CLIP text encoder), cross-attention width 64" in proc.stdout
    assert "read as: SD 1.x; unet block_out_channels=[32,64]" in proc.stdout, proc.stdout


class RunsAShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Evaluates:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize("payload,named", [(RunsAShell, "posix.system"), (Evaluates, "builtins.eval")])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(sdtune_bin, tmp_path, payload, named):
    marker = tmp_path / "MARKER"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.ones(2)}, "x": payload(marker)}, ckpt)
    for args in (("convert", ckpt, tmp_path / "out"), ("generate", "--model", ckpt, "--prompt", "x", "--out",
                                                       tmp_path / "x.png")):
        proc = subprocess.run([str(sdtune_bin), *map(str, args)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "SDTUNE_CACHE_DIR": str(tmp_path / "cache")})
        assert proc.returncode == 1, proc.stderr
        # protocol 2 spells builtins "__builtin__"
        assert f"refused: the pickle names the Python global '{named}'" in proc.stderr.replace("__builtin__.",
                                                                                               "builtins."), proc.stderr
        assert proc.stderr.count("error:") == 1, proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "cache/single-file").iterdir())  # nothing half-made in the cache


def test_broken_archives_are_named_errors(pipeline, sdtune_bin, tmp_path):
    _, state = single_file_state(pipeline, sdtune_bin, tmp_path)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": state}, good)
    data = good.read_bytes()

    def refused(path, words):
        proc = sdtune(sdtune_bin, "convert", path, tmp_path / f"out-{path.stem}")
        assert proc.returncode == 1 and words in proc.stderr and path.name in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / f"out-{path.stem}").exists()

    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "truncated.ckpt", "not a readable PyTorch checkpoint")
    (tmp_path / "legacy.ckpt").write_bytes(b"\x80\x02\x8a\x0alegacy torch.save")
    refused(tmp_path / "legacy.ckpt", "not a zip archive")
    # A storage record shorter than the elements it declares (a tensor would read past it).
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "short.ckpt", "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename.endswith("/data/0"):
                body = body[:-4]
            dst.writestr(info, body)
    refused(tmp_path / "short.ckpt", "storage record data/0 holds")
    # Compressed records could claim more than the file holds: refused before anything is read.
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "deflated.ckpt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info) if not info.filename.endswith("/data/0") else bytes(1 << 20))
    refused(tmp_path / "deflated.ckpt", "records add up to more than the file")
