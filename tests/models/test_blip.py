"""BLIP captioning's model (src/models/blip.cpp, src/caption/blip_decoding.cpp) against transformers'
BlipForConditionalGeneration on a random tiny config saved by transformers: the image embeddings,
the decoder's logits, and the greedy caption ids (with and without a prompt and min_length)."""

import json

import pytest
import torch
from parity import check
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(0)
    cfg = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=30524, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=64))
    model = BlipForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms and biases away from their identity initialisation
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or "layernorm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    folder = tmp_path_factory.mktemp("blip")
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


def run_forward(run_sdtune, folder, component, tmp_path, **inputs):
    inp, out = tmp_path / f"{component}_in.safetensors", tmp_path / f"{component}_out.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, inp)
    run_sdtune("forward", "--model", folder, "--component", component, "--inputs", inp, "--out", out)
    return load_file(out)


def pixels(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def test_the_file_leaves_out_the_tied_decoder_weights(blip):
    """What load_blip fills in: transformers saves the decoder's weights tied to the embeddings once."""
    folder, _ = blip
    keys = load_file(folder / "model.safetensors").keys()
    assert "text_decoder.bert.embeddings.word_embeddings.weight" in keys
    assert json.loads((folder / "config.json").read_text())["text_config"]["bos_token_id"] == 30522


def test_image_embeddings_and_decoder_logits(blip, run_sdtune, tmp_path):
    folder, model = blip
    x = pixels()
    ours = run_forward(run_sdtune, folder, "blip-vision", tmp_path, pixel_values=x)["image_embeds"]
    with torch.no_grad():
        ref = model.vision_model(pixel_values=x).last_hidden_state
    check("blip vision image_embeds", ours, ref, 1e-5)

    ids = torch.randint(0, 30524, (2, 9), generator=torch.Generator().manual_seed(3))
    ids[:, 0] = 30522
    logits = run_forward(run_sdtune, folder, "blip-text", tmp_path, input_ids=ids, image_embeds=ref)["logits"]
    with torch.no_grad():
        ref_logits = model.text_decoder(input_ids=ids, encoder_hidden_states=ref).logits
    check("blip text decoder logits", logits, ref_logits, 1e-5)


@pytest.mark.parametrize("prompt,min_length", [([101, 102], 0), ([101, 1037, 3861, 1997, 102], 9)])
def test_greedy_caption_ids(blip, run_sdtune, tmp_path, prompt, min_length):
    """BLIP's generate: [CLS] becomes [DEC], the prompt's [SEP] goes, then greedy tokens until [SEP]
    (not before min_length) or max_length; ids equal transformers'."""
    folder, model = blip
    x = pixels()
    ids = torch.tensor([prompt, prompt])
    with torch.no_grad():
        ref = model.generate(pixel_values=x, input_ids=ids.clone(), max_length=14, min_length=min_length,
                             do_sample=False, num_beams=1)
    ours = run_forward(run_sdtune, folder, "blip-generate", tmp_path, pixel_values=x, input_ids=ids,
                       max_length=torch.tensor(14), min_length=torch.tensor(min_length))["sequences"]
    assert ours.dtype == torch.int64
    assert ours.tolist() == ref.tolist()
    assert ours.shape[1] > len(prompt)  # it captioned something


def test_decoding_stops_at_sep_and_not_before_min_length(blip, run_sdtune, tmp_path):
    """A decoder that prefers [SEP]: the caption ends there, but not before min_length."""
    from transformers import BlipForConditionalGeneration

    folder, _ = blip
    model = BlipForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[102] += 50.0
    eager = tmp_path / "sep"
    model.save_pretrained(eager, safe_serialization=True)
    x, ids = pixels(), torch.tensor([[101, 102]] * 2)
    for min_length in (0, 6):
        with torch.no_grad():
            ref = model.generate(pixel_values=x, input_ids=ids.clone(), max_length=14, min_length=min_length)
        ours = run_forward(run_sdtune, eager, "blip-generate", tmp_path, pixel_values=x, input_ids=ids,
                           max_length=torch.tensor(14), min_length=torch.tensor(min_length))["sequences"]
        assert ours.tolist() == ref.tolist()
        assert ours.shape[1] == max(min_length, 1) + 1 and (ours[:, -1] == 102).all()


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping,min_length",
                         [(3, 1.0, False, 0), (4, 0.6, True, 0), (3, 2.0, False, 5), (2, -1.0, True, 3)])
def test_beam_search_ids(blip, run_sdtune, tmp_path, num_beams, length_penalty, early_stopping, min_length):
    """transformers' beam search: scores length-normalised by generated length ^ length_penalty, its
    early-stop heuristic or early_stopping, min_length; captions ending at [SEP] at different lengths
    (a decoder leaning to [SEP]) and padding as transformers pads."""
    from transformers import BlipForConditionalGeneration

    folder, _ = blip
    model = BlipForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[102] += 7.0
    lean = tmp_path / "lean"
    model.save_pretrained(lean, safe_serialization=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ids = torch.tensor([[101, 1037, 102]] * 3)
    kw = dict(max_length=12, min_length=min_length, num_beams=num_beams, length_penalty=length_penalty,
              early_stopping=early_stopping)
    with torch.no_grad():
        ref = model.generate(pixel_values=x, input_ids=ids.clone(), **kw)
    ours = run_forward(run_sdtune, lean, "blip-generate", tmp_path, pixel_values=x, input_ids=ids,
                       max_length=torch.tensor(12), min_length=torch.tensor(min_length),
                       num_beams=torch.tensor(num_beams), length_penalty=torch.tensor(length_penalty),
                       early_stopping=torch.tensor(early_stopping))["sequences"]
    assert ours.tolist() == ref.tolist()
    assert (ref == 102).any()  # some caption ended


def test_a_pytorch_model_bin_loads_as_the_safetensors(blip, run_sdtune, tmp_path):
    """Older BLIP repositories publish pytorch_model.bin: read through the restricted pickle reader."""
    import shutil

    folder, model = blip
    old = tmp_path / "bin"
    old.mkdir()
    shutil.copy(folder / "config.json", old / "config.json")
    torch.save(model.state_dict(), old / "pytorch_model.bin")
    x = pixels()
    a = run_forward(run_sdtune, folder, "blip-vision", tmp_path, pixel_values=x)["image_embeds"]
    b = run_forward(run_sdtune, old, "blip-vision", tmp_path, pixel_values=x)["image_embeds"]
    assert torch.equal(a, b)
