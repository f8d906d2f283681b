"""Serving under load: 32 clients at once, 4 requests each, get an image or a clean 503 (with
Retry-After), the server stays up and its memory stays where the first request left it. A client
that leaves cancels its generation; /interrupt answers with what is done; Ctrl-C stops the server
cleanly in the middle of a generation."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from serve_client import BASE

SMALL = dict(prompt="a square", steps=2, width=64, height=64, seed=1, sampler_name="Euler")
LONG = dict(prompt="a long one", steps=1000, width=256, height=256, seed=1, sampler_name="Euler")


def test_32_clients_get_images_or_clean_503s(serve):
    server = serve("--model", BASE, "--queue", 8)
    status, body, _ = server.request("/sdapi/v1/txt2img", SMALL)
    assert status == 200
    first = server.rss_kib()

    def client(i):
        answers = []
        for k in range(4):
            status, body, headers = server.request("/sdapi/v1/txt2img", dict(SMALL, seed=i * 4 + k))
            if status == 200:
                assert len(body["images"]) == 1 and json.loads(body["info"])["seed"] == i * 4 + k, body
            else:
                assert status == 503 and headers["Retry-After"] == "5" and "queue is full" in body["detail"], \
                    (status, body)
            answers.append(status)
        return answers

    with ThreadPoolExecutor(32) as pool:
        statuses = [s for answers in pool.map(client, range(32)) for s in answers]
    assert len(statuses) == 128 and statuses.count(200) >= 9, statuses  # at least the queue's worth
    assert server.request("/sdapi/v1/progress")[1]["state"]["job_count"] == 0
    status, body, _ = server.request("/sdapi/v1/txt2img", SMALL)
    assert status == 200
    after = server.rss_kib()
    assert after <= 1.10 * first, f"memory grew from {first} KiB after the first request to {after} KiB"


def wait_until(predicate, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def running(server):
    state = server.request("/sdapi/v1/progress?skip_current_image=true")[1]["state"]
    return state["job_count"] > 0 and state["sampling_step"] > 0


def test_a_client_that_leaves_cancels_its_generation(serve):
    server = serve("--model", BASE, "--max-steps", 1000)
    body = json.dumps(LONG).encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert wait_until(lambda: running(server), 30)
    s.close()
    # Within a few heartbeats the job is gone, long before its 1000 steps.
    assert wait_until(lambda: server.request("/sdapi/v1/progress")[1]["state"]["job_count"] == 0, 10)
    status, body, _ = server.request("/sdapi/v1/txt2img", SMALL, timeout=30)
    assert status == 200


def test_interrupt_answers_with_what_is_done(serve):
    server = serve("--model", BASE, "--max-steps", 1000)
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=server.request("/sdapi/v1/txt2img", LONG)))
    t.start()
    assert wait_until(lambda: running(server), 30)
    progress = server.request("/sdapi/v1/progress")[1]
    assert progress["current_image"] and progress["textinfo"].startswith("step "), progress  # the preview
    status, _, _ = server.request("/sdapi/v1/interrupt", {})
    assert status == 200
    t.join(30)
    status, body, _ = answer["r"]
    info = json.loads(body["info"])
    assert status == 200 and info["interrupted"] and body["images"] == [], info


def test_ctrl_c_stops_in_the_middle_of_a_generation(serve):
    server = serve("--model", BASE, "--max-steps", 1000)
    t = threading.Thread(target=lambda: server.request("/sdapi/v1/txt2img", LONG), daemon=True)
    t.start()
    assert wait_until(lambda: running(server), 30)
    start = time.monotonic()
    out, err = server.stop()  # SIGINT; exit status 0
    assert time.monotonic() - start < 15 and "stopped" in out, (out, err)
