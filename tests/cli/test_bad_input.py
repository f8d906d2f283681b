"""Bad input on the command line: every case must end with exit code 1 and exactly one line
"sdtune: error: ..." on stderr that names the file (and key) at fault and says what is wrong,
never with a crash, a signal or a backtrace.

Covered: malformed safetensors (as --inputs and as a component's weights), broken configs and
pipeline folders, weights that do not fit the config, and forward inputs of the wrong shape.
"""

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


# --- hand-made safetensors -------------------------------------------------------------------------


def st_bytes(header, data=b"", length=None):
    """A safetensors file: u64 little-endian header length (`length`, or the true one), the header
    (a dict written as JSON, or raw bytes) and the data buffer."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# name -> (bad bytes made from the valid file the bad one replaces, words the error must hold).
# None as bytes: the file does not exist. The tensor key at fault, where there is one, is a needle
# of its own ("'w'"): Error prints keys quoted.
BAD_SAFETENSORS = {
    "header_too_large": (lambda valid: struct.pack("<Q", 200_000_000) + b"{}" + b" " * 64, ["header size", "exceeds"]),
    "header_past_eof": (lambda valid: st_bytes(b'{"w": {}}', length=4096), ["header extends past end of file"]),
    "invalid_json": (lambda valid: st_bytes(b'{"w": {"dtype": "F32", "shape": [2],'), ["invalid JSON"]),
    "offsets_out_of_range": (
        lambda valid: st_bytes({"w": entry("F32", [4], 0, 16)}, bytes(8)),
        ["'w'", "past the end", "data buffer"],
    ),
    "overlapping_offsets": (
        lambda valid: st_bytes({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, bytes(12)),
        ["'b'", "overlap", "'a'"],
    ),
    "wrong_byte_length": (
        lambda valid: st_bytes({"w": entry("F32", [3], 0, 8)}, bytes(8)),
        ["'w'", "byte length 8", "[3] x F32 = 12"],
    ),
    "unknown_dtype": (lambda valid: st_bytes({"w": entry("F33", [2], 0, 8)}, bytes(8)), ["'w'", "unknown dtype", "F33"]),
    "truncated_data": (lambda valid: valid[:-3], ["past the end", "truncated"]),
    "shorter_than_8_bytes": (lambda valid: b"\x10\x00\x00", ["3 bytes", "shorter than the 8-byte header length"]),
    "missing_file": (None, ["cannot open file", "No such file"]),
}


def write_bad(path, case, valid):
    make, _ = BAD_SAFETENSORS[case]
    if path.exists():
        path.unlink()
    if make is not None:
        path.write_bytes(make(valid))


def test_hand_made_safetensors_helper_is_valid(tmp_path):
    """The helper writes what the safetensors library reads, so the bad files differ from a good
    one only where each case says."""
    p = tmp_path / "ok.safetensors"
    p.write_bytes(st_bytes({"a": entry("F32", [2], 0, 8), "b": entry("I64", [1], 8, 16)}, bytes(16)))
    t = load_file(p)
    assert t["a"].shape == (2,) and t["b"].dtype == torch.int64


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(pipeline):
    return pipeline("tiny")[0]


@pytest.fixture
def unet_inputs(tmp_path):
    """inputs(**overrides) -> path of a valid unet input file with some tensors replaced (a value
    of None drops the tensor)."""

    def make(**overrides):
        t = {
            "sample": torch.randn(1, 4, 16, 16),
            "timestep": torch.tensor([10]),
            "encoder_hidden_states": torch.randn(1, 77, 32),
        }
        t.update(overrides)
        path = tmp_path / "unet_in.safetensors"
        save_file({k: v for k, v in t.items() if v is not None}, path)
        return path

    return make


def forward(run_sdtune, tmp_path, model, component, inputs):
    return run_sdtune(
        "forward", "--model", model, "--component", component, "--inputs", inputs,
        "--out", tmp_path / "out.safetensors", check=False,
    )


# --- safetensors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_SAFETENSORS))
def test_bad_safetensors_as_forward_inputs(run_sdtune, one_line_error, tiny, unet_inputs, tmp_path, case):
    path = tmp_path / "bad_inputs.safetensors"
    write_bad(path, case, unet_inputs().read_bytes())
    proc = forward(run_sdtune, tmp_path, tiny, "unet", path)
    one_line_error(proc, str(path), *BAD_SAFETENSORS[case][1])
    assert not (tmp_path / "out.safetensors").exists()


def _weights_needles(folder, case):
    if case == "missing_file":  # then there are no weights at all, and the folder is named
        return [str(folder / "unet"), "no safetensors weights found"]
    return [str(folder / UNET_WEIGHTS), *BAD_SAFETENSORS[case][1]]


@pytest.mark.parametrize("case", list(BAD_SAFETENSORS))
def test_bad_safetensors_as_unet_weights_inspect(run_sdtune, one_line_error, copy_pipeline, case):
    folder = copy_pipeline()
    path = folder / UNET_WEIGHTS
    write_bad(path, case, path.read_bytes())
    proc = run_sdtune("inspect", folder, check=False)
    one_line_error(proc, *_weights_needles(folder, case))


@pytest.mark.parametrize("case", list(BAD_SAFETENSORS))
def test_bad_safetensors_as_unet_weights_forward(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path, case):
    folder = copy_pipeline()
    path = folder / UNET_WEIGHTS
    write_bad(path, case, path.read_bytes())
    proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    one_line_error(proc, *_weights_needles(folder, case))


def test_bad_shard_of_sharded_weights(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path):
    """A damaged shard is named, not just the index that lists it."""
    folder = copy_pipeline()
    weights = load_file(folder / UNET_WEIGHTS)
    (folder / UNET_WEIGHTS).unlink()
    names = sorted(weights)
    half = len(names) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, folder / "unet" / shard)
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert forward(run_sdtune, tmp_path, folder, "unet", unet_inputs()).returncode == 0

    bad = folder / "unet" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    bad.write_bytes(bad.read_bytes()[:-5])
    one_line_error(forward(run_sdtune, tmp_path, folder, "unet", unet_inputs()), str(bad), "truncated")
    one_line_error(run_sdtune("inspect", folder, check=False), str(bad), "truncated")

    bad.unlink()
    index_path = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    one_line_error(run_sdtune("inspect", folder, check=False), str(index_path), "missing", bad.name)


# --- configs and folders --------------------------------------------------------------------------


def _edit_unet_config(folder, edit):
    path = folder / "unet" / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("command", ["inspect", "forward"])
def test_missing_unet_config(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path, command):
    folder = copy_pipeline()
    config = folder / "unet" / "config.json"
    config.unlink()
    if command == "inspect":
        proc = run_sdtune("inspect", folder, check=False)
    else:
        proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    one_line_error(proc, str(config), "cannot open file")


@pytest.mark.parametrize("command", ["inspect", "forward"])
def test_unet_config_not_json(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path, command):
    folder = copy_pipeline()
    config = folder / "unet" / "config.json"
    config.write_text('{"block_out_channels": [32, 64],, }')
    if command == "inspect":
        proc = run_sdtune("inspect", folder, check=False)
    else:
        proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    one_line_error(proc, str(config), "not valid JSON")


def test_unet_config_missing_required_key(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path):
    folder = copy_pipeline()
    config = _edit_unet_config(folder, lambda c: c.pop("block_out_channels"))
    proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    one_line_error(proc, str(config), "'block_out_channels'", "missing required key")


@pytest.mark.parametrize(
    "key, value, needles",
    [
        ("layers_per_block", "two", ["expected a list of integers", '"two"']),
        ("block_out_channels", "abc", ["expected a list of integers", '"abc"']),
        ("block_out_channels", [32, "64"], ["expected a list of integers"]),
        ("use_linear_projection", "yes", ["expected true or false"]),
        ("norm_eps", "small", ["expected a number"]),
        ("layers_per_block", [1, 1, 1], ["expected 2 values (one per block), got 3"]),
    ],
)
def test_unet_config_wrong_type(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path, key, value, needles):
    folder = copy_pipeline()
    config = _edit_unet_config(folder, lambda c: c.update({key: value}))
    proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    one_line_error(proc, str(config), f"'{key}'", *needles)


@pytest.mark.parametrize("command", ["inspect", "forward"])
def test_missing_model_index(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path, command):
    folder = copy_pipeline()
    (folder / "model_index.json").unlink()
    if command == "inspect":
        proc = run_sdtune("inspect", folder, check=False)
    else:
        proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    one_line_error(proc, str(folder / "model_index.json"), "cannot open file")


@pytest.mark.parametrize("command", ["inspect", "forward", "tokenize"])
def test_missing_model_folder(run_sdtune, one_line_error, unet_inputs, tmp_path, command):
    folder = tmp_path / "no_such_model"
    if command == "inspect":
        proc = run_sdtune("inspect", folder, check=False)
    elif command == "forward":
        proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    else:
        proc = run_sdtune("tokenize", "--model", folder, input="a cat\n", check=False)
    one_line_error(proc, str(folder), "model folder not found")


def test_missing_component_folder(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path):
    folder = copy_pipeline()
    shutil.rmtree(folder / "unet")
    one_line_error(run_sdtune("inspect", folder, check=False), str(folder / "unet"), "component folder not found")
    proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    one_line_error(proc, str(folder / "unet"), "component folder not found")


# --- weights that do not fit the config -----------------------------------------------------------


def _edit_weights(folder, edit, rel=UNET_WEIGHTS):
    path = folder / rel
    weights = load_file(path)
    edit(weights)
    save_file(weights, path)


def test_missing_weights_file(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path):
    folder = copy_pipeline()
    (folder / UNET_WEIGHTS).unlink()
    for proc in (run_sdtune("inspect", folder, check=False), forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())):
        one_line_error(proc, str(folder / "unet"), "no safetensors weights found", "diffusion_pytorch_model")


def test_unet_config_without_blocks(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path):
    # Once a segmentation fault: the cross_attention_dim of the first of no blocks.
    folder = copy_pipeline()
    config = _edit_unet_config(folder, lambda c: c.update(block_out_channels=[], down_block_types=[],
                                                          up_block_types=[]))
    proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    one_line_error(proc, str(config), "'block_out_channels'", "a UNet needs at least one block")


@pytest.mark.parametrize("heads", [0, -1])
def test_text_encoder_config_without_heads(run_sdtune, one_line_error, copy_pipeline, tmp_path, heads):
    # Once a floating-point exception: hidden_size % 0.
    folder = copy_pipeline()
    path = folder / "text_encoder" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_attention_heads": heads}))
    inputs = tmp_path / "ids.safetensors"
    save_file({"input_ids": torch.zeros(1, 77, dtype=torch.long)}, inputs)
    proc = forward(run_sdtune, tmp_path, folder, "text-encoder", inputs)
    one_line_error(proc, str(path), "'num_attention_heads'", f"must be positive, got {heads}")


def test_weights_missing_key(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path):
    folder = copy_pipeline()
    _edit_weights(folder, lambda w: w.pop("conv_in.bias"))
    proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    one_line_error(proc, str(folder / "unet"), "missing keys (1)", "conv_in.bias")


def test_text_encoder_weights_missing_key(run_sdtune, one_line_error, copy_pipeline, tmp_path):
    folder = copy_pipeline()
    rel = "text_encoder/model.safetensors"
    key = next(k for k in load_file(folder / rel) if k.endswith("final_layer_norm.weight"))
    _edit_weights(folder, lambda w: w.pop(key), rel)
    inputs = tmp_path / "ids.safetensors"
    save_file({"input_ids": torch.zeros(1, 77, dtype=torch.long)}, inputs)
    proc = forward(run_sdtune, tmp_path, folder, "text-encoder", inputs)
    one_line_error(proc, str(folder / "text_encoder"), "missing keys (1)", "final_layer_norm.weight")


def test_weights_shape_mismatch_one_tensor(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path):
    folder = copy_pipeline()
    _edit_weights(folder, lambda w: w.update({"conv_in.weight": torch.zeros(16, 4, 3, 3)}))
    proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    one_line_error(
        proc, str(folder / "unet"), "shape mismatches (1)", "conv_in.weight", "expected [32,4,3,3]", "got [16,4,3,3]"
    )


def test_weights_shape_mismatch_from_config(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path):
    """The config says one thing, the weights another: many mismatches, still one line."""
    folder = copy_pipeline()
    _edit_unet_config(folder, lambda c: c.update(block_out_channels=[32, 48]))
    proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    line = one_line_error(proc, str(folder / "unet"), "weights do not match the model config", "shape mismatches")
    assert "expected [48" in line and "got [64" in line, line
    assert "more" in line, line  # a long list is cut short


def test_weights_unexpected_key(run_sdtune, one_line_error, copy_pipeline, unet_inputs, tmp_path):
    folder = copy_pipeline()
    _edit_weights(folder, lambda w: w.update({"extra_head.weight": torch.zeros(3)}))
    proc = forward(run_sdtune, tmp_path, folder, "unet", unet_inputs())
    line = one_line_error(proc, str(folder / "unet"), "unexpected keys (1)", "extra_head.weight")
    assert "missing" not in line and "mismatch" not in line, line


# --- forward inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (dict(timestep=None), ["'timestep'", "missing input tensor"]),
        (dict(sample=None), ["'sample'", "missing input tensor"]),
        (dict(encoder_hidden_states=None), ["'encoder_hidden_states'", "missing input tensor"]),
        (dict(sample=torch.randn(4, 16, 16)), ["'sample'", "expected 4 dimensions, got 3"]),
        (dict(encoder_hidden_states=torch.randn(77, 32)), ["'encoder_hidden_states'", "expected 3 dimensions, got 2"]),
        (dict(timestep=torch.zeros(1, 1)), ["'timestep'", "scalar or [B]"]),
        (dict(timestep=torch.tensor([1, 2, 3])), ["'timestep'", "B = 1"]),
        (dict(encoder_hidden_states=torch.randn(1, 77, 16)), ["'encoder_hidden_states'", "16 != cross_attention_dim 32"]),
        (dict(sample=torch.randn(1, 3, 16, 16)), ["'sample'", "expected 4 channels, got 3"]),
        (dict(encoder_hidden_states=torch.randn(2, 77, 32)), ["'encoder_hidden_states'", "batch"]),
    ],
    ids=["no_timestep", "no_sample", "no_context", "sample_rank", "context_rank", "timestep_rank",
         "timestep_batch", "cross_attention_dim", "sample_channels", "context_batch"],
)
def test_unet_bad_inputs(run_sdtune, one_line_error, tiny, unet_inputs, tmp_path, overrides, needles):
    path = unet_inputs(**overrides)
    proc = forward(run_sdtune, tmp_path, tiny, "unet", path)
    one_line_error(proc, str(path), *needles)


@pytest.mark.parametrize(
    "component, tensors, needles",
    [
        ("text-encoder", dict(input_ids=torch.zeros(1, 77)), ["'input_ids'", "int64"]),
        ("text-encoder", dict(input_ids=torch.zeros(77, dtype=torch.long)), ["'input_ids'", "expected 2 dimensions"]),
        ("text-encoder", dict(ids=torch.zeros(1, 77, dtype=torch.long)), ["'input_ids'", "missing input tensor"]),
        ("text-encoder", dict(input_ids=torch.zeros(1, 100, dtype=torch.long)), ["'input_ids'", "100 tokens", "77"]),
        ("text-encoder", dict(input_ids=torch.full((1, 77), 49408)), ["'input_ids'", "49408", "vocab"]),
        ("text-encoder", dict(input_ids=torch.full((1, 77), -1)), ["'input_ids'", "-1", "vocab"]),
        ("vae-encoder", dict(sample=torch.randn(1, 4, 32, 32)), ["'sample'", "expected 3 channels, got 4"]),
        ("vae-encoder", dict(sample=torch.randn(3, 32, 32)), ["'sample'", "expected 4 dimensions"]),
        ("vae-decoder", dict(latents=torch.randn(1, 3, 8, 8)), ["'latents'", "expected 4 channels, got 3"]),
        ("vae-decoder", dict(sample=torch.randn(1, 4, 8, 8)), ["'latents'", "missing input tensor"]),
    ],
    ids=["ids_float", "ids_rank", "no_ids", "ids_too_long", "ids_past_vocab", "ids_negative",
         "vae_sample_channels", "vae_sample_rank", "latent_channels", "no_latents"],
)
def test_other_components_bad_inputs(run_sdtune, one_line_error, tiny, tmp_path, component, tensors, needles):
    path = tmp_path / "in.safetensors"
    save_file(tensors, path)
    proc = forward(run_sdtune, tmp_path, tiny, component, path)
    one_line_error(proc, str(path), *needles)


def test_unknown_component(run_sdtune, clean_failure, tiny, unet_inputs, tmp_path):
    proc = forward(run_sdtune, tmp_path, tiny, "clip", unet_inputs())
    clean_failure(proc)
    assert "--component" in proc.stderr


def test_unsupported_input_dtype(run_sdtune, one_line_error, tiny, tmp_path):
    """A valid safetensors dtype that LibTorch cannot hold (F4) is an error naming the tensor."""
    path = tmp_path / "f4.safetensors"
    path.write_bytes(st_bytes({"sample": entry("F4", [2], 0, 1)}, bytes(1)))
    proc = forward(run_sdtune, tmp_path, tiny, "unet", path)
    one_line_error(proc, str(path), "'sample'", "F4")


def test_good_run_still_works(run_sdtune, tiny, unet_inputs, tmp_path):
    """The fixtures above are valid apart from what each case breaks."""
    proc = forward(run_sdtune, tmp_path, tiny, "unet", unet_inputs())
    assert proc.returncode == 0, proc.stderr
    assert load_file(tmp_path / "out.safetensors")["sample"].shape == (1, 4, 16, 16)
