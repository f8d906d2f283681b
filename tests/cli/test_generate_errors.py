"""`sdtune generate` on bad input: one clear line, non-zero exit, nothing overwritten."""

import pytest


@pytest.fixture
def tiny(pipeline):
    return pipeline("tiny")[0]


def test_unknown_scheduler(run_sdtune, tiny, tmp_path, one_line_error):
    proc = run_sdtune("generate", "--model", tiny, "--prompt", "x", "--scheduler", "heun", "--out", tmp_path / "a.png",
                      check=False)
    one_line_error(proc, "unknown scheduler 'heun'")


def test_width_not_multiple_of_8(run_sdtune, tiny, tmp_path, one_line_error):
    proc = run_sdtune("generate", "--model", tiny, "--prompt", "x", "--width", 30, "--out", tmp_path / "a.png",
                      check=False)
    one_line_error(proc, "multiples of 8", "30")


@pytest.mark.parametrize("command", ["generate", "grid"])
def test_cuda_graph_needs_cuda(run_sdtune, tiny, tmp_path, one_line_error, command):
    out = ["--out", tmp_path / "a.png"] if command == "generate" else ["--seed", 1, "--out", tmp_path / "g.png"]
    proc = run_sdtune(command, "--model", tiny, "--prompt", "x", "--cuda-graph", *out, check=False)
    one_line_error(proc, "--cuda-graph needs --device cuda")
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "g.png").exists()


def test_missing_model_folder(run_sdtune, tmp_path, one_line_error):
    proc = run_sdtune("generate", "--model", tmp_path / "nope", "--prompt", "x", "--out", tmp_path / "a.png",
                      check=False)
    one_line_error(proc, "nope", "model folder not found")


@pytest.mark.parametrize("content", [None, b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_init_image(run_sdtune, tiny, tmp_path, one_line_error, content):
    init = tmp_path / "init.png"
    if content is not None:
        init.write_bytes(content)
    proc = run_sdtune("generate", "--model", tiny, "--prompt", "x", "--init-image", init, "--out", tmp_path / "a.png",
                      check=False)
    one_line_error(proc, "init.png")


def test_existing_output_is_not_overwritten(run_sdtune, tiny, tmp_path, one_line_error):
    out = tmp_path / "a.png"
    out.write_bytes(b"precious")
    proc = run_sdtune("generate", "--model", tiny, "--prompt", "x", "--steps", 1, "--out", out, check=False)
    one_line_error(proc, "a.png", "refusing to overwrite")
    assert out.read_bytes() == b"precious"


def test_long_prompt_is_truncated_with_a_warning(run_sdtune, tiny, tmp_path):
    proc = run_sdtune("generate", "--model", tiny, "--prompt", "a red circle " * 40, "--steps", 1, "--seed", 1,
                      "--out", tmp_path / "a.png", "--quiet")
    assert "longer than 77" in proc.stderr and "warning" in proc.stderr
    assert (tmp_path / "a.png").exists()
