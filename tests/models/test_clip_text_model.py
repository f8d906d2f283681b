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
