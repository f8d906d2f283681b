"""`sdtune caption` with a vision-language model over an OpenAI-compatible chat-completions API
(src/caption, src/io/http_client), against a local HTTP server that each test starts on 127.0.0.1
and scripts: normal replies, 500, 429 with Retry-After, a timeout, truncated JSON and an empty
caption before success, a server that never succeeds, and one that refuses the key. Captions land
in metadata.jsonl (or .txt sidecars) that `sdtune train` reads; existing ones are kept; the key never
leaks."""

import base64
import io
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

KEY = "sk-test-0123456789-secret"
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class ChatServer:
    """A chat-completions endpoint. `script(n, colour)` gives the n-th request's reply as
    (status, headers, body bytes, seconds to wait first); the default answers "a COLOUR square"."""

    def __init__(self, script=None):
        self.requests = []
        self.script = script or (lambda n, colour: (200, {}, reply(f"a {colour} square"), 0))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                url = body["messages"][0]["content"][1]["image_url"]["url"]
                image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                colour = next(c for c, rgb in COLOURS.items() if image.convert("RGB").getpixel((0, 0)) == rgb)
                n = len(server.requests)
                server.requests.append(dict(time=time.monotonic(), path=self.path, colour=colour, size=image.size,
                                            auth=self.headers.get("Authorization"), body=body,
                                            url_prefix=url[:22]))
                status, headers, payload, wait = server.script(n, colour)
                time.sleep(wait)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(text):
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


@pytest.fixture
def server():
    servers = []

    def start(script=None):
        servers.append(ChatServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def images(folder, sizes=None):
    folder.mkdir(parents=True, exist_ok=True)
    for colour, rgb in COLOURS.items():
        Image.new("RGB", (sizes or {}).get(colour, (32, 32)), rgb).save(folder / f"{colour}.png")
    return folder


def caption(sdtune_bin, data, srv, *extra, key=KEY):
    env = {**os.environ, "SDTUNE_TEST_KEY": key}
    return subprocess.run([str(sdtune_bin), "caption", "--data", str(data), "--api-base", srv.base, "--api-model",
                           "tiny-vlm", "--api-key-env", "SDTUNE_TEST_KEY", "--quiet", *map(str, extra)],
                          capture_output=True, text=True, timeout=120, env=env)


def rows(data):
    return {r["file_name"]: r for r in map(json.loads, (data / "metadata.jsonl").read_text().splitlines())}


def no_key_anywhere(proc, data):
    assert KEY not in proc.stdout and KEY not in proc.stderr
    for f in data.iterdir():
        if f.suffix in (".jsonl", ".txt"):
            assert KEY not in f.read_text()


def test_captions_from_an_api_feed_train(sdtune_bin, pipeline, server, tmp_path):
    data = images(tmp_path / "data", sizes={"red": (64, 48)})
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "blue.png", "text": "kept caption",
                                                     "source": "by hand"}) + "\n")
    srv = server()
    proc = caption(sdtune_bin, data, srv, "--prefix", "naruto style, ", "--api-max-side", 32, "--jobs", 2)
    assert proc.returncode == 0, proc.stderr
    assert "images: 3 (captioned 2, kept 1, skipped 0, failed 0)" in proc.stdout, proc.stdout
    got = rows(data)
    assert got["blue.png"] == {"file_name": "blue.png", "text": "kept caption", "source": "by hand"}
    assert got["red.png"]["text"] == "naruto style, a red square"
    assert got["green.png"]["text"] == "naruto style, a green square"
    assert sorted(r["colour"] for r in srv.requests) == ["green", "red"]
    for r in srv.requests:
        assert r["path"] == "/v1/chat/completions" and r["auth"] == f"Bearer {KEY}"
        assert r["body"]["model"] == "tiny-vlm" and r["url_prefix"] == "data:image/png;base64,"
    assert next(r["size"] for r in srv.requests if r["colour"] == "red") == (32, 24)  # --api-max-side
    no_key_anywhere(proc, data)
    # A rerun asks for nothing: every image has its caption.
    again = caption(sdtune_bin, data, srv)
    assert again.returncode == 0 and "captioned 0, kept 3" in again.stdout and len(srv.requests) == 2
    # The folder is a training set as it is.
    train = subprocess.run([str(sdtune_bin), "train", "--model", str(pipeline("tiny")[0]), "--data", str(data),
                            "--out", str(tmp_path / "out"), "--resolution", "32", "--max-steps", "1", "--quiet"],
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    assert "examples: 3 used" in train.stdout, train.stdout


def test_failures_before_success_are_retried(sdtune_bin, server, tmp_path):
    """500, 429 with Retry-After: 1, a reply slower than --timeout, truncated JSON and an empty caption,
    then a caption: six requests, the seventh never made; the wait after the 429 is the server's."""
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (16, 16), COLOURS["red"]).save(data / "red.png")
    sequence = [(500, {}, b'{"error": "overloaded"}', 0), (429, {"Retry-After": "1"}, b"slow down", 0),
                (200, {}, reply("too late"), 3), (200, {}, reply("a red square")[:25], 0),
                (200, {}, reply("  "), 0), (200, {}, reply("a red square"), 0)]
    srv = server(lambda n, colour: sequence[min(n, len(sequence) - 1)])
    proc = caption(sdtune_bin, data, srv, "--retries", 6, "--retry-delay", 0.05, "--timeout", 1)
    assert proc.returncode == 0, proc.stderr
    assert len(srv.requests) == 6
    assert rows(data)["red.png"]["text"] == "a red square"
    t = [r["time"] for r in srv.requests]
    assert t[2] - t[1] >= 0.95  # Retry-After honoured
    assert t[3] - t[2] >= 0.95  # the timed-out request took its second


def test_a_server_that_never_succeeds(sdtune_bin, server, tmp_path):
    """Every attempt fails, the error body echoing the key: a failure count, a non-zero exit, no
    caption for those images, the existing one kept, the key masked."""
    data = images(tmp_path / "data")
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "blue.png", "text": "kept"}) + "\n")
    srv = server(lambda n, colour: (503, {}, f"backend down; you sent Bearer {KEY}".encode(), 0))
    proc = caption(sdtune_bin, data, srv, "--retries", 2, "--retry-delay", 0.01)
    assert proc.returncode == 1, proc.stderr
    assert "images: 3 (captioned 0, kept 1, skipped 0, failed 2)" in proc.stdout, proc.stdout
    assert "2 of 2 images got no caption" in proc.stderr
    assert "HTTP 503" in proc.stderr and "***" in proc.stderr
    assert len(srv.requests) == 2 * 3
    assert rows(data) == {"blue.png": {"file_name": "blue.png", "text": "kept"}}
    no_key_anywhere(proc, data)


def test_a_refused_key_is_not_retried(sdtune_bin, server, tmp_path):
    data = images(tmp_path / "data")
    srv = server(lambda n, colour: (401, {}, b'{"error": "invalid api key"}', 0))
    proc = caption(sdtune_bin, data, srv, "--retries", 5, "--retry-delay", 0.01, "--jobs", 1)
    assert proc.returncode == 1 and "HTTP 401" in proc.stderr, proc.stderr
    assert len(srv.requests) == 3  # once per image
    assert not (data / "metadata.jsonl").exists()


def test_sidecars_and_overwrite(sdtune_bin, server, tmp_path):
    data = images(tmp_path / "data")
    (data / "green.txt").write_text("my own words\n")
    (data / "broken.png").write_bytes((data / "red.png").read_bytes()[:40])  # truncated
    srv = server()
    proc = caption(sdtune_bin, data, srv, "--sidecar", "--suffix", ", anime")
    assert proc.returncode == 0, proc.stderr
    assert "images: 4 (captioned 2, kept 1, skipped 1, failed 0)" in proc.stdout, proc.stdout
    assert "skipping broken.png" in proc.stderr
    assert (data / "red.txt").read_text().strip() == "a red square, anime"
    assert (data / "green.txt").read_text().strip() == "my own words"
    assert not (data / "metadata.jsonl").exists()
    proc = caption(sdtune_bin, data, srv, "--sidecar", "--overwrite")
    assert proc.returncode == 0 and "captioned 3, kept 0, skipped 1" in proc.stdout
    assert (data / "green.txt").read_text().strip() == "a green square"


def test_bad_arguments(sdtune_bin, tmp_path):
    data = images(tmp_path / "data")
    run = lambda *a: subprocess.run([str(sdtune_bin), "caption", "--data", str(data), *map(str, a)],
                                    capture_output=True, text=True, timeout=60,
                                    env={k: v for k, v in os.environ.items() if k != "SDTUNE_UNSET_KEY"})
    proc = run("--api-base", "http://127.0.0.1:9/v1")
    assert proc.returncode == 1 and "--api-model" in proc.stderr
    proc = run("--api-base", "http://127.0.0.1:9/v1", "--api-model", "m", "--api-key-env", "SDTUNE_UNSET_KEY")
    assert proc.returncode == 1 and "SDTUNE_UNSET_KEY, which is not set" in proc.stderr
    proc = run("--blip", tmp_path)  # no BLIP model there
    assert proc.returncode == 1 and f"{tmp_path / 'config.json'}: cannot open" in proc.stderr, proc.stderr
    proc = run("--blip", tmp_path, "--api-base", "http://127.0.0.1:9/v1")
    assert proc.returncode == 1 and "choose one" in proc.stderr
    # Nothing listens on the discard port: each image fails, named, and nothing is written.
    proc = run("--api-base", "http://127.0.0.1:9/v1", "--api-model", "m", "--retries", 0, "--quiet")
    assert proc.returncode == 1 and "failed 3" in proc.stdout and "request failed" in proc.stderr, proc.stderr
    assert not (data / "metadata.jsonl").exists()
