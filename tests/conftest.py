"""Shared pytest fixtures: the sdtune binary, and a record of the worst parity errors."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent



def pytest_terminal_summary(terminalreporter):
    from parity import WORST

    if WORST:
        terminalreporter.write_sep("-", "worst parity error (max|diff| / max|reference|)")
        for name in sorted(WORST):
            terminalreporter.write_line(f"{name:40s} {WORST[name]:.3e}")


@pytest.fixture(scope="session")
def sdtune_bin():
    path = Path(os.environ.get("SDTUNE_BIN", REPO / "build" / "sdtune"))
    if not path.exists():
        pytest.fail(f"sdtune binary not found at {path}: build first (scripts/setup.sh) or set SDTUNE_BIN")
    return path


@pytest.fixture(scope="session")
def run_sdtune(sdtune_bin):
    """run_sdtune(*args, input=None, check=True) -> CompletedProcess with text stdout/stderr."""

    def run(*args, input=None, check=True):
        proc = subprocess.run([str(sdtune_bin), *map(str, args)], input=input, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"sdtune {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run
