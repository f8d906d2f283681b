"""`sdtune tokenize --model DIR` as a user runs it: plain prompts on stdin, one per line, give the
ids of transformers' CLIPTokenizer; a prompt past 77 tokens is truncated with a warning."""

import json

import pytest

PROMPTS = [
    "a photo of a cat",
    "An astronaut riding a horse on Mars, 4k, trending on artstation!",
    "a very long prompt, " * 30,  # ~120 tokens
]


@pytest.mark.parametrize("kind", ["tiny", "sd2"])
def test_tokenize_plain_lines_match_transformers(run_sdtune, pipeline, kind):
    from transformers import CLIPTokenizer

    folder, _ = pipeline(kind)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    expected = [tokenizer(p, padding="max_length", max_length=77, truncation=True).input_ids for p in PROMPTS]
    assert len(tokenizer(PROMPTS[2]).input_ids) > 77  # the case really is past the limit

    proc = run_sdtune("tokenize", "--model", folder, input="".join(p + "\n" for p in PROMPTS))
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(got) == len(PROMPTS)
    for prompt, ours, ref in zip(PROMPTS, got, expected):
        assert len(ours) == 77
        assert ours == ref, prompt

    warnings = proc.stderr.splitlines()
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("sdtune: warning: line 3:"), warnings[0]
    assert "truncated" in warnings[0] and "77" in warnings[0], warnings[0]
