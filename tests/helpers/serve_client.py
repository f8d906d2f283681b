"""`sdtune serve` run by a test (tests/serve/): started on a free port of 127.0.0.1, talked to over
HTTP, stopped with Ctrl-C (SIGINT), which must end it cleanly (exit 0)."""

import json
import os
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "world" / "base"  # the tiny world's base model


class Server:
    def __init__(self, sdtune_bin, *args, env=None):
        self.proc = subprocess.Popen([str(sdtune_bin), "serve", "--port", "0", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        line = ""
        timer = threading.Timer(120, self.proc.kill)
        timer.start()
        try:
            while "listening on" not in line:
                line = self.proc.stdout.readline()
                if not line:
                    raise AssertionError("sdtune serve did not start:\n" + self.proc.stderr.read())
        finally:
            timer.cancel()
        self.url = line.split("listening on ")[1].strip()
        self.port = int(self.url.rsplit(":", 1)[1])

    def request(self, path, body=None, token=None, raw=None, timeout=120):
        """(status, parsed JSON body or text) of GET path, or POST of body (JSON) / raw (bytes)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET")
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", "Bearer " + token)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as res:
                status, text, headers = res.status, res.read().decode(), res.headers
        except urllib.error.HTTPError as e:
            status, text, headers = e.code, e.read().decode(), e.headers
        try:
            return status, json.loads(text), headers
        except json.JSONDecodeError:
            return status, text, headers

    def rss_kib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self):
        """Ctrl-C: the server must stop cleanly, with exit status 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, (self.proc.returncode, err)
        return out, err
