"""SIGKILL the trainer at several points, resume, and get bitwise the params of an uninterrupted
run (CPU). Real processes, real kills: slow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow

ARGS = ["--smoke", "--config.train.updates=4", "--config.train.checkpoint_every=1",
        "--config.train.eval_every=4", "--config.train.tensorboard=False"]  # fmt: skip


def train(workdir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "gtr_turbo_jax", "train", f"--workdir={workdir}", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def final_params(workdir: Path) -> list[np.ndarray]:
    from gtr_turbo_jax.train.commands import restore_run

    _, state, host = restore_run(workdir)
    assert host["update"] == 4
    keys = lambda x: (
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )
    return [np.asarray(keys(x)) for x in jax.tree.leaves(state)]


def lines(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else -1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference") / "run"
    process = train(workdir, *ARGS)
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()
    return final_params(workdir)


# kill once metrics.jsonl has this many lines (-1: config written, still warming up / compiling),
# plus a delay that lands in different phases (rollout, update, the async save).
KILL_POINTS = [(-1, 0.0), (1, 0.0), (2, 0.7), (3, 0.2)]


@pytest.mark.parametrize("after_lines, delay", KILL_POINTS)
def test_kill_and_resume_is_bitwise(reference, tmp_path, after_lines, delay):
    workdir = tmp_path / "run"
    process = train(workdir, *ARGS)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        ready = (workdir / "config.json").exists() if after_lines < 0 else None
        if ready or (after_lines >= 0 and lines(workdir) >= after_lines + 1):
            break
        time.sleep(0.05)
    time.sleep(delay)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = train(workdir, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()
    for a, b in zip(reference, final_params(workdir), strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_on_a_simulated_mesh(tmp_path):
    """`train.mesh` (data=2, fsdp=2) on 4 simulated CPU devices: the run completes, the state is
    saved in the FSDP layout's values and restores on one device."""
    workdir = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}  # fmt: skip
    command = [sys.executable, "-m", "gtr_turbo_jax", "train", f"--workdir={workdir}", *ARGS,
               "--config.train.mesh.data=2", "--config.train.mesh.fsdp=2"]  # fmt: skip
    process = subprocess.run(command, env=env, capture_output=True, timeout=900)
    assert process.returncode == 0, process.stderr.decode()[-2000:]
    assert len(final_params(workdir)) > 0
