"""Untrusted image files (src/io/image.cpp): a decompression bomb is refused from its header before
anything is decoded, so a dataset holding one trains in the memory of a clean one; truncated and
empty files are named and skipped like it; --max-image-pixels sets the limit; a large image within
it is decoded straight to the training size, never whole."""

import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image

PIL_LIMIT = 2 * Image.MAX_IMAGE_PIXELS  # PIL's DecompressionBombError threshold (178956970)


def bomb_png(path, side):
    """An RGB PNG of side × side black pixels: a few hundred KB declaring side² × 3 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, rows, block = zlib.compressobj(9), side, 256
    row = bytes(1 + 3 * side)  # filter byte 0, then black pixels
    idat = b"".join(z.compress(row * min(block, rows - i)) for i in range(0, rows, block)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def dataset(folder, n=3):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def peak_rss_mib(cmd):
    """(CompletedProcess, the command's peak resident memory in MiB), measured in a fresh Python
    whose only child is the command."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(p.returncode); "
             "sys.stderr.write(p.stdout + '\\0' + p.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe, *map(str, cmd)], capture_output=True, text=True)
    rss_kib, code = proc.stdout.split()
    out, err = proc.stderr.split("\0")
    return subprocess.CompletedProcess(cmd, int(code), out, err), int(rss_kib) / 1024


def train_rss(train, data, out):
    """peak_rss_mib of a 32-pixel center-crop training run `train` (the command up to its options)
    on `data`."""
    return peak_rss_mib([*train, "--data", data, "--out", out, "--resolution", 32, "--center-crop", "--quiet"])


def test_a_bomb_in_the_dataset_is_skipped_undecoded(sdtune_bin, pipeline, tmp_path):
    side = 14000  # 196 megapixels, over PIL's limit; 588 MB of RGB once decoded
    assert side * side > PIL_LIMIT
    clean = dataset(tmp_path / "clean")
    hostile = dataset(tmp_path / "hostile")
    bomb_png(hostile / "bomb.png", side)
    (hostile / "truncated.png").write_bytes((clean / "0.png").read_bytes()[:200])
    (hostile / "empty.png").write_bytes(b"")
    assert (hostile / "bomb.png").stat().st_size < 2 << 20

    train = [sdtune_bin, "train", "--model", pipeline("tiny")[0], "--max-steps", 1, "--batch-size", 1]
    proc_clean, rss_clean = train_rss(train, clean, tmp_path / "out_clean")
    proc, rss = train_rss(train, hostile, tmp_path / "out_hostile")
    print(f"\npeak RSS: clean dataset {rss_clean:.0f} MiB, with the bomb {rss:.0f} MiB")
    assert proc_clean.returncode == 0 and proc.returncode == 0, proc.stderr
    assert "examples: 3 used, 3 skipped" in proc.stdout
    assert (f"skipping {hostile / 'bomb.png'}: image is 14000x14000 (196000000 pixels), over the limit of "
            f"{PIL_LIMIT} (--max-image-pixels)") in proc.stderr
    for name in ["truncated.png", "empty.png"]:
        assert f"skipping {hostile / name}: cannot read image" in proc.stderr
    assert rss < rss_clean + 150, (rss, rss_clean)


def test_a_large_image_is_decoded_at_the_training_size(sdtune_bin, pipeline, tmp_path):
    """A 9000 × 9000 photo (81 megapixels, within the limit: 243 MB of RGB) is streamed through
    the resize to the 32-pixel training size, so the run's memory is that of a clean dataset."""
    side = 9000
    clean = dataset(tmp_path / "clean")
    large = dataset(tmp_path / "large")
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    Image.fromarray(np.stack([np.broadcast_to(ramp, (side, side))] * 3, axis=-1)).save(large / "large.png")

    train = [sdtune_bin, "train", "--model", pipeline("tiny")[0], "--max-steps", 4, "--batch-size", 2]
    proc_clean, rss_clean = train_rss(train, clean, tmp_path / "out_clean")
    proc, rss = train_rss(train, large, tmp_path / "out_large")
    print(f"\npeak RSS: clean dataset {rss_clean:.0f} MiB, with a {side}x{side} image {rss:.0f} MiB")
    assert proc_clean.returncode == 0 and proc.returncode == 0, proc.stderr
    assert "examples: 4 used" in proc.stdout, proc.stdout
    assert rss < rss_clean + 100, (rss, rss_clean)


def test_max_image_pixels_sets_the_limit(run_sdtune, pipeline, tmp_path, one_line_error):
    data = dataset(tmp_path / "data")
    proc = run_sdtune("train", "--model", pipeline("tiny")[0], "--data", data, "--out", tmp_path / "out",
                      "--resolution", 32, "--center-crop", "--max-steps", 1, "--max-image-pixels", 48 * 40 - 1,
                      "--quiet", check=False)
    assert proc.returncode == 1 and "no usable training image (3 skipped)" in proc.stderr.splitlines()[-1]
    assert proc.stderr.count(f"(1920 pixels), over the limit of {48 * 40 - 1} (--max-image-pixels)") == 3
    assert not (tmp_path / "out" / "model_index.json").exists()


def test_a_bomb_as_init_image_is_an_error(run_sdtune, pipeline, tmp_path, one_line_error):
    bomb = bomb_png(tmp_path / "bomb.png", 14000)
    proc = run_sdtune("generate", "--model", pipeline("tiny")[0], "--prompt", "x", "--init-image", bomb,
                      "--out", tmp_path / "a.png", check=False)
    one_line_error(proc, str(bomb), "image is 14000x14000 (196000000 pixels), over the limit")
    assert not (tmp_path / "a.png").exists()
