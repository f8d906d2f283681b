"""Images per second of BLIP captioning on the CPU: `sdtune caption --blip` against transformers'
BlipProcessor + BlipForConditionalGeneration.generate + decode, same weights, images and decoding
settings, same machine, in one run.

The model has blip-image-captioning-base's shape (ViT-B/16 at 384x384, a 12-layer BERT decoder,
~250 M parameters) with random weights and a made-up WordPiece vocabulary of BERT's size (no
download). Every caption is forced to the same length (--min-length = --max-length), so that both
sides decode the same number of tokens whatever the random model prefers. Each side runs on N and on
2N images; images/s = N / (t(2N) - t(N)), which leaves out loading the model and starting the
process.

    python3 bench/blip_caption.py [--images 8] [--batch-size 8] [--max-length 20] [--num-beams 1]
"""

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
VOCAB = 30522  # BERT's; BLIP adds [DEC] and [ENC]


def build_model(folder):
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, \
        BlipProcessor

    folder.mkdir(parents=True)
    base = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(VOCAB - len(base))]
    (folder / "vocab.txt").write_text("\n".join(base + words) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    torch.manual_seed(0)
    config = BlipConfig(  # blip-image-captioning-base's sizes
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=384, patch_size=16),
        text_config=dict(vocab_size=VOCAB + 2, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, encoder_hidden_size=768, max_position_embeddings=512))
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessor(), tokenizer=tokenizer)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return model, processor


def make_images(folder, n, seed):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return sorted(folder.glob("*.png"))


def time_transformers(model, processor, files, batch, max_length, beams):
    start = time.perf_counter()
    captions = []
    with torch.no_grad():
        for i in range(0, len(files), batch):
            images = [Image.open(f).convert("RGB") for f in files[i:i + batch]]
            inputs = processor(images=images, return_tensors="pt")
            ids = model.generate(**inputs, max_length=max_length, min_length=max_length, num_beams=beams)
            captions += processor.batch_decode(ids, skip_special_tokens=True)
    return time.perf_counter() - start, captions


def time_sdtune(binary, model_dir, data, batch, max_length, beams):
    start = time.perf_counter()
    proc = subprocess.run([str(binary), "caption", "--data", str(data), "--blip", str(model_dir), "--batch-size",
                           str(batch), "--max-length", str(max_length), "--min-length", str(max_length),
                           "--num-beams", str(beams), "--sidecar"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sdtune caption failed ({proc.returncode}): {proc.stderr}")
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8, help="N: each side runs N and 2N images")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=20)
    ap.add_argument("--num-beams", type=int, default=1)
    ap.add_argument("--bin", default=os.environ.get("SDTUNE_BIN", REPO / "build" / "sdtune"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model, processor = build_model(d / "model")
        n = args.images
        sets = {k: make_images(d / f"images{k}", k, seed=k) for k in (n, 2 * n)}
        # Warm-up (first-call allocations, the OS file cache) on both sides.
        time_transformers(model, processor, sets[n][:1], 1, args.max_length, args.num_beams)
        make_images(d / "warm", 1, seed=99)
        time_sdtune(args.bin, d / "model", d / "warm", 1, args.max_length, args.num_beams)
        ours, theirs = {}, {}
        for k, files in sets.items():
            theirs[k], _ = time_transformers(model, processor, files, args.batch_size, args.max_length,
                                             args.num_beams)
            ours[k] = time_sdtune(args.bin, d / "model", d / f"images{k}", args.batch_size, args.max_length,
                                  args.num_beams)
        rate = lambda t: n / (t[2 * n] - t[n])
        print(f"BLIP-base shape, CPU ({os.cpu_count()} threads), batch {args.batch_size}, {args.max_length} tokens, "
              f"beams {args.num_beams}")
        print(f"  transformers: {rate(theirs):.3f} images/s  (N={n}: {theirs[n]:.1f} s, 2N: {theirs[2 * n]:.1f} s)")
        print(f"  sdtune:       {rate(ours):.3f} images/s  (N={n}: {ours[n]:.1f} s, 2N: {ours[2 * n]:.1f} s, "
              f"process start and model load included in both)")
        print(f"  ratio sdtune/transformers: {rate(ours) / rate(theirs):.2f}")


if __name__ == "__main__":
    main()
