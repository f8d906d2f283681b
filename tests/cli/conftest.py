"""Fixtures of the command-line tests: copies of the session's pipelines to break, and a check
that a failing run ended the way a user should see it end."""

import re
import shutil

import pytest


@pytest.fixture
def copy_pipeline(pipeline, tmp_path):
    """copy_pipeline(kind="tiny") -> a private copy of the pipeline folder, free to damage."""

    def copy(kind="tiny"):
        src, _ = pipeline(kind)
        dst = tmp_path / f"copy_{kind}"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_tokenizer_src"))
        return dst

    return copy


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
