"""BLIP's BERT WordPiece tokenizer (src/text/bert_tokenizer.cpp) against transformers' BertTokenizer
(the tokenizers library's normalizer, pre-tokenizer, WordPiece model and decoder) on hard strings:
accents, CJK, punctuation, control characters, special tokens in the text, over-long words; ids of
the folder transformers saves (tokenizer.json) and of a vocab.txt folder; decoded text."""

import json
import subprocess
import unicodedata

import pytest

HARD = [
    "A picture of Cats running!",
    "Héllo  WÖRLD\tnaïve café, Ångström",
    "日本語のテキスト and 中文",
    "don't stop—it's 3.14 + 2=5? (yes) [maybe] {no}",
    "[DEC] a picture of",
    "a [ENC] b[DEC]c",
    "   leading and trailing   ",
    "emoji 🐱 cat ☃",
    "control\x00\x07chars\x1b here\ufffd",
    "supercalifragilisticexpialidocious" * 4,
    "İstanbul ǅ title\u00a0nbsp zero\u200bwidth",
    "",
    "yoda ninja portrait",
]
WORDS = ["a", "picture", "of", "cat", "##s", "run", "##ning", "the", "yoda", "ninja", "portrait", "hello", "world",
         "naive", "cafe", "don", "stop", "it", "yes", "no", "maybe", "and", "here", "title", "zero", "##width", "emoji"]


def vocab():
    chars = set()
    for s in HARD:
        folded = "".join(c for c in unicodedata.normalize("NFD", s.lower()) if unicodedata.category(c) != "Mn")
        chars.update(c for c in folded if not c.isspace())
    chars = sorted(chars)
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + WORDS


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import BertTokenizer

    d = tmp_path_factory.mktemp("bert")
    (d / "vocab.txt").write_text("\n".join(vocab()) + "\n")
    ref = BertTokenizer(str(d / "vocab.txt"))
    ref.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    ref.save_pretrained(d / "saved")
    # The older layout: vocab.txt with the added tokens beside it.
    plain = d / "plain"
    plain.mkdir()
    (plain / "vocab.txt").write_text("\n".join(vocab()) + "\n")
    (plain / "added_tokens.json").write_text(json.dumps({"[DEC]": ref.convert_tokens_to_ids("[DEC]"),
                                                         "[ENC]": ref.convert_tokens_to_ids("[ENC]")}))
    return ref, d / "saved", plain


def sdtune_lines(sdtune_bin, folder, lines, decode=False):
    proc = subprocess.run([str(sdtune_bin), "tokenize", "--wordpiece", str(folder), *(["--decode"] if decode else [])],
                          input="".join(json.dumps(x) + "\n" for x in lines), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_ids_equal_transformers(tokenizers, sdtune_bin):
    ref, saved, plain = tokenizers
    want = [ref(s).input_ids for s in HARD]
    assert any(ref.unk_token_id in ids for ids in want)  # the over-long word, the emoji
    assert sdtune_lines(sdtune_bin, saved, HARD) == want
    assert sdtune_lines(sdtune_bin, plain, HARD) == want


def test_decoded_text_equals_transformers(tokenizers, sdtune_bin):
    ref, saved, _ = tokenizers
    ids = [ref(s).input_ids for s in HARD] + [[2, 37, 3, 9, 12, 99, 5, 6, 1]]
    want = [ref.decode(i, skip_special_tokens=True) for i in ids]
    assert sdtune_lines(sdtune_bin, saved, ids, decode=True) == want
