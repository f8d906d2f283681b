"""The binaries that the build makes, for the tests that run them: the one place that finds them."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def built_binary(name):
    """$SDTUNE_BUILD_DIR/NAME (build/NAME by default); the sdtune binary itself may be named by
    $SDTUNE_BIN (e.g. the AddressSanitizer build's). A missing binary fails the test, never skips it."""
    if name == "sdtune" and os.environ.get("SDTUNE_BIN"):
        path = Path(os.environ["SDTUNE_BIN"])
    else:
        path = Path(os.environ.get("SDTUNE_BUILD_DIR", REPO / "build")) / name
    if not path.exists():
        pytest.fail(f"{name} not found at {path}: build first (scripts/setup.sh) or set SDTUNE_BUILD_DIR")
    return path
