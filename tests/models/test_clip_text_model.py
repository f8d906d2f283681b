"""CLIPTextModel parity: last hidden state and pooled output against transformers, on ids from
the real CLIP tokenizer."""

import pytest
import torch
from parity import check

PROMPTS = ["a photo of a cat", "Yoda ninja portrait", "", "avatarart style, a person " * 20]


@pytest.mark.parametrize("kind", ["tiny", "sd2", "sd15"])
def test_text_encoder_matches_transformers(pipeline, forward, kind):
    folder, pipe = pipeline(kind)
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = pipe.text_encoder(ids)
    out = forward(folder, "text-encoder", input_ids=ids)
    check(f"text-encoder.last_hidden_state[{kind}]", out["last_hidden_state"], ref.last_hidden_state)
    check(f"text-encoder.pooler_output[{kind}]", out["pooler_output"], ref.pooler_output)


@pytest.mark.parametrize("kind", ["tiny", "sd2"])
def test_hidden_states_for_clip_skip(pipeline, forward, kind):
    """Every intermediate layer (what "clip skip" selects) equals transformers' hidden_states."""
    folder, pipe = pipeline(kind)
    ids = pipe.tokenizer(PROMPTS[:2], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
    out = forward(folder, "text-encoder", "--output-hidden-states", input_ids=ids)
    assert len(ref) == pipe.text_encoder.config.num_hidden_layers + 1
    assert sorted(k for k in out if k.startswith("hidden_states.")) == sorted(f"hidden_states.{i}" for i in range(len(ref)))
    for i, r in enumerate(ref):
        check(f"text-encoder.hidden_states[{kind}]", out[f"hidden_states.{i}"], r)


def test_text_encoder_2_with_projection(pipeline, forward):
    """SDXL's second encoder (CLIPTextModelWithProjection): its penultimate layer (the context
    SDXL uses) and the projected pooled output (text_embeds) equal transformers'."""
    folder, pipe = pipeline("sdxl")
    ids = pipe.tokenizer_2(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = pipe.text_encoder_2(ids, output_hidden_states=True)
    out = forward(folder, "text-encoder-2", "--output-hidden-states", input_ids=ids)
    assert ref.text_embeds.shape == (len(PROMPTS), pipe.text_encoder_2.config.projection_dim)
    check("text-encoder-2.text_embeds", out["text_embeds"], ref.text_embeds)
    check("text-encoder-2.hidden_states[-2]", out[f"hidden_states.{len(ref.hidden_states) - 2}"], ref.hidden_states[-2])
    # The first encoder of the same folder is a plain CLIPTextModel: no projection.
    assert "text_embeds" not in forward(folder, "text-encoder", input_ids=ids)
