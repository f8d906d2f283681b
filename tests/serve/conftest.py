"""The `serve` fixture: servers a test starts, all stopped (and their clean exit checked) at its end."""

import pytest

from serve_client import Server


@pytest.fixture
def serve(sdtune_bin):
    """serve(*args, env=None) -> a running Server; all are stopped (and checked) at the end."""
    started = []

    def start(*args, env=None):
        s = Server(sdtune_bin, *args, env=env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
