"""Requests meant to hurt: each gets its status and a JSON error, and the server keeps serving
others (every test ends with a request that must still work, and with Ctrl-C stopping it cleanly)."""

import json
import socket
import time

import pytest

from serve_client import BASE

OK = dict(prompt="a square", steps=2, width=64, height=64, seed=1, sampler_name="Euler")


def still_serving(server, token=None):
    status, body, _ = server.request("/sdapi/v1/txt2img", OK, token=token)
    assert status == 200 and len(body["images"]) == 1, body


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 422, "not valid JSON"),
    (b"[1, 2]", 422, "must be a JSON object"),
    (b"", 422, "not valid JSON"),
    (json.dumps(dict(OK, width=100000)).encode(), 422, "width: 100000 is outside"),
    (json.dumps(dict(OK, width=2048, height=2048)).encode(), 422, "over this server's limit"),
    (json.dumps(dict(OK, steps=-3)).encode(), 422, "steps: -3 is outside"),
    (json.dumps(dict(OK, steps=10**9)).encode(), 422, "steps:"),
    (json.dumps(dict(OK, steps="ten")).encode(), 422, "steps: expected an integer"),
    (json.dumps(dict(OK, prompt=5)).encode(), 422, "prompt: expected a string"),
    (json.dumps(dict(OK, cfg_scale=float("nan"))).encode(), 422, "not valid JSON"),  # NaN is no JSON
    (json.dumps(dict(OK, seed=1.5)).encode(), 422, "seed: expected an integer"),
    (json.dumps(dict(OK, batch_size=1000)).encode(), 422, "batch_size:"),
    (json.dumps(dict(OK, sampler_name="Heun++")).encode(), 422, "unknown sampler 'Heun++'"),
    (json.dumps(dict(OK, override_settings={"sd_model_checkpoint": "../../etc/passwd"})).encode(), 422,
     "unknown model"),
    (json.dumps(dict(OK, prompt="x" * 70000)).encode(), 422, "longer than 64 KiB"),
    (("[" * 5000 + "]" * 5000).encode(), 422, "deeper than 32"),
    (json.dumps(dict(OK, extra={"a": json.loads("[" * 40 + "1" + "]" * 40)})).encode(), 422, "deeper than 32"),
])
def test_bad_bodies_get_422(serve, body, status, says):
    server = serve("--model", BASE, "--max-steps", 50)
    got, answer, _ = server.request("/sdapi/v1/txt2img", raw=body)
    assert got == status and says in answer["detail"], answer
    still_serving(server)


def test_an_oversize_body_gets_413(serve):
    server = serve("--model", BASE, "--max-body-mib", 1)
    status, answer, _ = server.request("/sdapi/v1/txt2img", raw=b'{"prompt": "' + b"x" * (2 << 20) + b'"}')
    assert status == 413 and answer["error"] == "Payload Too Large", answer
    status, answer, _ = server.request("/sdapi/v1/img2img", raw=b" " * (3 << 20))
    assert status == 413
    still_serving(server)


def test_the_token_is_needed_everywhere_but_the_page(serve):
    server = serve("--model", BASE, "--api-key-env", "SDTUNE_TEST_KEY", env={"SDTUNE_TEST_KEY": "s3cret-token"})
    for path, body in (("/sdapi/v1/sd-models", None), ("/sdapi/v1/txt2img", OK), ("/sdapi/v1/progress", None),
                       ("/sdapi/v1/interrupt", {})):
        for token in (None, "wrong", "s3cret-token-and-more", "s3cret-toke"):
            status, answer, headers = server.request(path, body, token=token)
            assert status == 401 and headers["WWW-Authenticate"] == "Bearer", (path, token, answer)
    status, page, _ = server.request("/")
    assert status == 200 and "<html" in page
    still_serving(server, token="s3cret-token")


def test_an_unset_key_variable_is_an_error(sdtune_bin):
    import subprocess

    proc = subprocess.run([str(sdtune_bin), "serve", "--model", str(BASE), "--api-key-env", "SDTUNE_UNSET_VAR_X"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "SDTUNE_UNSET_VAR_X" in proc.stderr


def test_a_slow_client_holds_only_its_own_connection(serve):
    """Slowloris: a client that sends its headers a byte at a time (or stops) is dropped after the
    read timeout, and others are served meanwhile."""
    server = serve("--model", BASE, "--read-timeout", 2)
    slow = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
        slow.append(s)
    still_serving(server)
    time.sleep(3)
    for s in slow:
        # The server has given up on it (a 400, then end of file, or a reset), not waiting for more.
        s.settimeout(5)
        try:
            data = s.recv(4096)
            assert data == b"" or data.startswith(b"HTTP/1.1 400"), data
            while data:
                data = s.recv(4096)
        except ConnectionResetError:
            pass
        s.close()
    still_serving(server)


def test_unknown_paths_and_methods(serve):
    server = serve("--model", BASE)
    status, answer, _ = server.request("/sdapi/v1/nothing")
    assert status == 404 and answer["error"] == "Not Found"
    status, answer, _ = server.request("/../../etc/passwd")
    assert status in (400, 404)
    still_serving(server)
