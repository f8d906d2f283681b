"""Shared pytest fixtures: the sdtune binary, a record of the worst parity errors, and a check that
a failing run ended the way a user should see it end."""

import os
import re
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tiny_models import build_pipeline
from binaries import built_binary

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def single_file_cache(tmp_path_factory):
    """Single files read by any test are unpacked under the session's tmp, never the user's
    ~/.cache/sdtune, so a test run leaves nothing behind (and cannot reuse a stale unpacking)."""
    folder = tmp_path_factory.mktemp("single-file-cache")
    old = os.environ.get("SDTUNE_CACHE_DIR")
    os.environ["SDTUNE_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("SDTUNE_CACHE_DIR", None)
    else:
        os.environ["SDTUNE_CACHE_DIR"] = old


def pytest_terminal_summary(terminalreporter):
    from parity import WORST

    if WORST:
        terminalreporter.write_sep("-", "worst parity error (max|diff| / max|reference|)")
        for name in sorted(WORST):
            terminalreporter.write_line(f"{name:40s} {WORST[name]:.3e}")


@pytest.fixture(scope="session")
def sdtune_bin():
    return built_binary("sdtune")


@pytest.fixture(scope="session")
def run_sdtune(sdtune_bin):
    """run_sdtune(*args, input=None, check=True) -> CompletedProcess with text stdout/stderr."""

    def run(*args, input=None, check=True):
        proc = subprocess.run([str(sdtune_bin), *map(str, args)], input=input, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"sdtune {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run


_PIPELINES = {}


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """pipeline(kind) -> (folder, diffusers StableDiffusionPipeline) for kind in
    tiny_models.CONFIGS, built with diffusers on first use and shared by the whole session."""

    def get(kind):
        if kind not in _PIPELINES:
            folder = tmp_path_factory.mktemp(f"pipe_{kind}")
            _PIPELINES[kind] = (folder, build_pipeline(kind, folder))
        return _PIPELINES[kind]

    yield get
    _PIPELINES.clear()


@pytest.fixture
def forward(run_sdtune, tmp_path):
    """forward(folder, component, *extra_args, **inputs) -> dict of the output tensors of
    `sdtune forward` on those inputs."""

    def run(folder, component, *extra_args, **inputs):
        inp, out = tmp_path / f"{component}_in.safetensors", tmp_path / f"{component}_out.safetensors"
        save_file({k: v.contiguous() for k, v in inputs.items()}, inp)
        run_sdtune("forward", "--model", folder, "--component", component, "--inputs", inp, "--out", out, *extra_args)
        return load_file(out)

    return run


# What a crash (rather than a handled error) leaves on stderr.
CRASH_SIGNS = re.compile(
    r"terminate called|Aborted|Segmentation fault|core dumped|Exception raised from|frame #\d|"
    r"libc10|libtorch|std::|what\(\):"
)


def _assert_one_line_error(proc, *needles):
    """The run failed cleanly: exit code 1 (not a signal), no crash text, and exactly one line on
    stderr of the form "sdtune: error: ...", holding each of `needles`; returns that line."""
    err = proc.stderr
    assert proc.returncode == 1, f"exit code {proc.returncode} (want 1); stderr:\n{err}"
    assert not CRASH_SIGNS.search(err), f"crash-like text on stderr:\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"want exactly one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("sdtune: error: "), line
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in: {line}"
    return line


def _assert_clean_failure(proc):
    """A non-zero exit that is not a signal or a crash (used for argument errors, whose wording is
    CLI11's)."""
    assert proc.returncode > 0, f"exit code {proc.returncode}; stderr:\n{proc.stderr}"
    assert not CRASH_SIGNS.search(proc.stderr), f"crash-like text on stderr:\n{proc.stderr}"


@pytest.fixture(scope="session")
def one_line_error():
    """one_line_error(proc, *needles) -> the error line; see _assert_one_line_error."""
    return _assert_one_line_error


@pytest.fixture(scope="session")
def clean_failure():
    """clean_failure(proc); see _assert_clean_failure."""
    return _assert_clean_failure
