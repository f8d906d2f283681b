"""Data-parallel plumbing (src/distributed/): the launchers' environments (torchrun, and mpirun's
and srun's variables) join a c10d Gloo process group over loopback, and every collective gives
each rank the mean, sum or broadcast value computed here; gradients are averaged by the gradient
reducer, whose buckets start while the backward pass runs; a rank that dies makes the others fail
with an error naming the failure instead of hanging."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from binaries import built_binary


@pytest.fixture(scope="module")
def check_bin():
    return built_binary("sdtune_collectives_check")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(launcher, rank, world, port):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "SLURM_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    env["MASTER_PORT"] = str(port)
    if launcher == "mpirun":
        env.update(OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_SIZE=str(world),
                   OMPI_COMM_WORLD_LOCAL_RANK=str(rank), OMPI_COMM_WORLD_LOCAL_SIZE=str(world))
    else:  # srun: its launch node's address instead of MASTER_ADDR
        env.update(SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS=str(world), SLURM_LOCALID=str(rank),
                   SLURM_LAUNCH_NODE_IPADDR="127.0.0.1", SLURM_NTASKS=str(world))
    return env


def expected(world):
    ranks = np.arange(world, dtype=np.float64)
    return {
        "averaged": [np.mean([np.arange(12) * (r + 1) for r in ranks], axis=0).tolist(),
                     [np.mean(10 * (ranks + 1))] * 5, [np.mean(ranks)] * 2, [np.mean(ranks + 1)] * 4],
        "sum": float(np.sum(ranks + 0.5)),
        "broadcast": [7.0 * (world - 1)] * 3,
    }


def check_outputs(out_dir, world, launcher, buckets=3):
    want = expected(world)
    for rank in range(world):
        got = json.loads((out_dir / f"rank-{rank}.json").read_text())
        assert got["rank"] == rank and got["world_size"] == world and got["launcher"] == launcher
        # float32 (3 tensors, the unused one last), float64, bfloat16; or one bucket per tensor.
        # Every bucket but the one holding the unused tensor starts during the backward pass.
        assert got["buckets"] == buckets and got["started_in_backward"] == buckets - 1
        assert not got["unused_has_grad"]
        for g, w in zip(got["averaged"], want["averaged"]):
            np.testing.assert_allclose(g, w, rtol=1e-2 if len(g) == 4 else 1e-6)  # bf16: 3 digits
        assert got["sum"] == pytest.approx(want["sum"])
        assert got["broadcast"] == want["broadcast"]


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--no-python", *map(str, args)]


@pytest.mark.parametrize("bucket_bytes", [25 << 20, 16])  # one bucket per dtype; one per tensor
def test_torchrun_collectives(check_bin, tmp_path, bucket_bytes):
    world = 3
    proc = subprocess.run(torchrun("--nproc-per-node", world, "--master-port", free_port(), check_bin,
                                   "--out-dir", tmp_path, "--bucket-bytes", bucket_bytes),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    check_outputs(tmp_path, world, "torchrun", buckets=3 if bucket_bytes > 16 else 5)


@pytest.mark.parametrize("launcher", ["mpirun", "srun"])
def test_mpirun_and_srun_environments(check_bin, tmp_path, launcher):
    world, port = 2, free_port()
    procs = [subprocess.Popen([str(check_bin), "--out-dir", str(tmp_path)], env=env_for(launcher, r, world, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    check_outputs(tmp_path, world, launcher)


def test_a_dead_rank_fails_the_others_instead_of_hanging(check_bin, tmp_path):
    world, port, timeout_s = 2, free_port(), 20
    started = time.monotonic()
    args = [check_bin, "--out-dir", tmp_path, "--die-rank", 1, "--timeout-ms", timeout_s * 1000]
    procs = [subprocess.Popen(list(map(str, args)),
                              env=env_for("mpirun", r, world, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(world)]
    results = [p.communicate(timeout=120) for p in procs]
    elapsed = time.monotonic() - started
    assert procs[1].returncode == 3
    assert procs[0].returncode == 1, results[0][1]
    err = results[0][1].strip()
    assert len(err.splitlines()) == 1 and "rank 0 of 2: all-reduce of gradients failed" in err, err
    assert elapsed < timeout_s + 30, elapsed
    assert not (tmp_path / "rank-0.json").exists()


def test_a_rank_that_never_comes_ends_the_wait(check_bin, tmp_path):
    started = time.monotonic()
    proc = subprocess.run([str(check_bin), "--out-dir", str(tmp_path), "--timeout-ms", "3000"],
                          env=env_for("mpirun", 0, 2, free_port()), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "error: rank 0 of 2 cannot join the run at 127.0.0.1:" in proc.stderr and "(mpirun, gloo)" in proc.stderr
    assert time.monotonic() - started < 30
