"""`sdtune caption --blip`: BLIP's image processor, model and tokenizer together
(src/caption/blip_captioner.cpp) give the captions transformers gives with
BlipProcessor + BlipForConditionalGeneration.generate + processor.decode, for a random tiny BLIP
saved by transformers with a WordPiece vocabulary made here: unconditional and with a prompt,
batched. The pixels the processor makes are compared first (the random model hardly looks at the
image; tests/models/test_blip.py checks that part, and min_length, on the model's outputs)."""

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

VOCAB = 30522  # BERT's, as BLIP's text config expects ([DEC] = 30522, [ENC] = 30523)


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, \
        BlipProcessor

    d = tmp_path_factory.mktemp("blip")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = ["a", "picture", "of", "photo", "cat", "dog", "sitting", "on", "the", "sofa"]
    base = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = list(dict.fromkeys(words + letters + ["##" + c for c in letters] + list(".,!?'")))
    filler = [f"w{i}" for i in range(VOCAB - len(base) - len(pieces))]
    (d / "vocab.txt").write_text("\n".join(base + pieces + filler) + "\n")
    tokenizer = BertTokenizer(str(d / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    assert tokenizer.convert_tokens_to_ids("[DEC]") == VOCAB and tokenizer.cls_token_id == 101

    torch.manual_seed(0)
    cfg = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=48, patch_size=8),
        text_config=dict(vocab_size=VOCAB + 2, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=64))
    model = BlipForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
        # Captions from a few words only (w896.. of the filler), so that they read as text.
        bias = model.text_decoder.cls.predictions.decoder.bias
        bias[:] = -100.0
        bias[1000:1012] = 0.0
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 48, "width": 48}),
                              tokenizer=tokenizer)
    out = d / "model"
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out, model, processor


def images(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(64, 40), (31, 77), (48, 48), (200, 150)]):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return sorted(folder.glob("*.png"))


def test_pixels_equal_the_processors(blip_folder, run_sdtune, tmp_path):
    folder, _, processor = blip_folder
    files = images(tmp_path / "data")
    for f in files:
        rgb = torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy())
        save_file({"image": rgb}, tmp_path / "in.safetensors")
        run_sdtune("forward", "--model", folder, "--component", "blip-pixels", "--inputs", tmp_path / "in.safetensors",
                   "--out", tmp_path / "out.safetensors")
        ours = load_file(tmp_path / "out.safetensors")["pixel_values"]
        ref = processor(images=Image.open(f).convert("RGB"), return_tensors="pt").pixel_values
        assert ours.shape == ref.shape and torch.equal(ours, ref), (f.name, (ours - ref).abs().max())


@pytest.mark.parametrize("prompt,beams", [("", 1), ("a picture of", 1), ("a picture of", 3)])
def test_captions_equal_transformers(blip_folder, sdtune_bin, tmp_path, prompt, beams):
    folder, model, processor = blip_folder
    files = images(tmp_path / "data")
    want = {}
    for f in files:
        inputs = processor(images=Image.open(f).convert("RGB"), text=prompt or None, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_length=16, num_beams=beams)
        want[f.name] = processor.decode(ids[0], skip_special_tokens=True)
    assert all(len(v.split()) >= 10 for v in want.values()), want
    if prompt:
        assert all(v.startswith(prompt + " ") for v in want.values())
    proc = subprocess.run([str(sdtune_bin), "caption", "--data", str(tmp_path / "data"), "--blip", str(folder),
                           "--blip-prompt", prompt, "--max-length", "16", "--num-beams", str(beams),
                           "--batch-size", "3", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "images: 4 (captioned 4, kept 0, skipped 0, failed 0)" in proc.stdout
    got = {json.loads(line)["file_name"]: json.loads(line)["text"]
           for line in (tmp_path / "data/metadata.jsonl").read_text().splitlines()}
    assert got == want
