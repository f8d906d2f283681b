"""CLIP tokenizer files (vocab.json, merges.txt, configs) laid out like the published SD ones.

They are derived from open_clip's bpe_simple_vocab_16e6.txt.gz exactly the way openai CLIP's
SimpleTokenizer builds its vocabulary, which is what the SD 1.x / 2.x tokenizer folders hold, so
tests need no download.
"""

import gzip
import json
import os
from pathlib import Path

SD1_PAD = "<|endoftext|>"
SD2_PAD = "!"
MAX_LENGTH = 77


def bytes_to_unicode():
    """GPT-2's map from every byte to a printable unicode character (as in CLIP and tokenizers)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _bpe_file():
    # Located without importing open_clip (whose import needs ftfy, timm, ...): the GPU machine
    # carries the bare wheel.
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise ModuleNotFoundError("open_clip (pip install open-clip-torch) carries the CLIP BPE vocabulary")
    return os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")


def clip_vocab_and_merges():
    """(vocab dict token -> id, list of merge lines "a b") as in SD's tokenizer/ folder."""
    with gzip.open(_bpe_file(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # SimpleTokenizer: skip the header line, keep 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    return {tok: i for i, tok in enumerate(vocab)}, [" ".join(m) for m in merges]


def write_clip_tokenizer(directory, pad_token=SD1_PAD, model_max_length=MAX_LENGTH):
    """Writes vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json.

    pad_token "<|endoftext|>" gives the SD 1.x layout, "!" the SD 2.x one. Returns the folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    with open(directory / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(directory / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")

    def added(content):
        return {
            "content": content,
            "lstrip": False,
            "normalized": True,
            "rstrip": False,
            "single_word": False,
            "__type": "AddedToken",
        }

    config = {
        "add_prefix_space": False,
        "bos_token": added("<|startoftext|>"),
        "do_lower_case": True,
        "eos_token": added("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": pad_token if pad_token == SD1_PAD else added(pad_token),
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added("<|endoftext|>"),
    }
    with open(directory / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": pad_token,
        "unk_token": "<|endoftext|>",
    }
    with open(directory / "special_tokens_map.json", "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2, ensure_ascii=False)
    return directory
