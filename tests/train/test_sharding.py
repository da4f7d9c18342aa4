"""Sharding of the update step: the FSDP spec rule on hand-worked shapes, the rules on a real
`TrainState`, clear errors, and (slow, in a subprocess with 8 simulated CPU devices) the sharded
step equal to the 1-device step to 1e-5 for meshes (data=8), (fsdp=8) and (data=2, fsdp=4).

Run as a script (`python test_sharding.py`), this file is that subprocess: the device count must be
set before JAX initialises, so it cannot run inside the pytest process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _train_cases import MODEL_CONFIG, build_state, make_batch
from jax.sharding import PartitionSpec as P

from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.train.config import UpdateConfig
from gtr_turbo_jax.train.sharding import (
    fsdp_spec,
    leaf_path,
    make_mesh,
    partition_specs,
    state_shardings,
)

MESHES = ((8, 1), (1, 8), (2, 4))
# 2 turns x 8 envs = 16 samples: 2 optimizer steps of 2 micro-batches of 4 per epoch.
CONFIG = UpdateConfig(
    mode="turbo_kl",
    ppo_epochs=2,
    minibatch_size=4,
    grad_accum_steps=2,
    merge_interval=2,  # the second update merges the teacher
    snapshot_capacity=4,
    learning_rate=1e-3,
    grad_clip=1.0,
)


@pytest.mark.parametrize(
    "shape, fsdp, min_elements, expected",
    [
        ((1024, 32), 8, 0, P("fsdp")),  # the largest dimension
        ((4, 32), 8, 0, P(None, "fsdp")),  # the largest is not always the first
        ((32, 3, 2, 14, 14), 4, 0, P("fsdp")),
        ((32, 3, 2, 14, 14), 7, 0, P(None, None, None, "fsdp")),  # first of equal candidates
        ((36, 24), 8, 0, P(None, "fsdp")),  # the largest divisible, not the largest
        ((3, 5), 8, 0, P()),  # nothing divisible: replicated
        ((64, 64), 8, 4097, P()),  # too small
        ((64, 64), 8, 4096, P("fsdp")),
        ((1024, 32), 1, 0, P()),  # no fsdp axis to shard over
        ((), 8, 0, P()),
    ],
)
def test_fsdp_spec_hand_worked(shape, fsdp, min_elements, expected):
    assert fsdp_spec(shape, fsdp, min_elements) == expected


@pytest.fixture(scope="module")
def state():
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_random_checkpoint(Path(tmp) / "ckpt", MODEL_CONFIG, 7)
        return build_state(checkpoint, CONFIG)[1]


def test_rules_on_the_train_state(state):
    specs = partition_specs(state, fsdp_size=8, min_shard_elements=0)
    named = {
        leaf_path(path): spec
        for path, spec in jax.tree_util.tree_flatten_with_path(
            specs, is_leaf=lambda x: isinstance(x, P)
        )[0]
    }
    shapes = {
        leaf_path(path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
    }
    assert named.keys() == shapes.keys()
    replicated = {"key", "update_count", "snapshot_count", "snapshot_valid", "dagger/count"}
    replicated |= {name for name in named if name.startswith("opt_state") and "count" in name}
    replicated |= {name for name in named if "/hyperparams/" in name}
    for name, spec in named.items():
        shape = shapes[name]
        if name in replicated:
            assert spec == P(), name
            continue
        # Independent reading of the rule: the first axis of maximal size among the divisible.
        sizes = [size if size % 8 == 0 else -1 for size in shape]
        if max(sizes, default=-1) < 0:
            assert spec == P(), name
        else:
            axis = sizes.index(max(sizes))
            assert spec == P(*[None] * axis, "fsdp"), (name, shape, spec)
    # Adam's moments are laid out as the parameters they follow.
    policy = leaf_path(jax.tree_util.tree_flatten_with_path(state.policy)[0][0][0])
    assert named[f"policy/{policy}"] == named[f"opt_state/1/inner_state/0/mu/0/{policy}"]
    assert named["base/language_model/embed_tokens/weight/value"] == P("fsdp")  # [1024, 32]


def test_one_device_mesh_replicates_everything(state):
    mesh = make_mesh(1, 1)
    shardings = jax.tree.leaves(state_shardings(state, mesh, min_shard_elements=0))
    assert {sharding.spec for sharding in shardings} == {P()}


def test_mesh_that_does_not_fit_the_devices_is_one_clear_error():
    devices = len(jax.local_devices())
    with pytest.raises(ValueError, match=r"mesh \(data=2, fsdp=4\) does not fit"):
        make_mesh(2 * devices, 4)
    with pytest.raises(ValueError, match="data and fsdp must be positive"):
        make_mesh(0, devices)


def _wide_batch():
    """8 envs: four 2-env test batches side by side."""
    parts = [make_batch(seed) for seed in range(4)]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *parts)


def _compare_on_eight_devices() -> dict:
    """The subprocess: the plain `update_step` (on device 0) against the sharded step on each
    mesh, two updates (the second merges the teacher); max abs differences per mesh."""
    from gtr_turbo_jax.train.sharding import batch_shardings, sharded_update_step
    from gtr_turbo_jax.train.update import update_step

    assert jax.device_count() == 8, jax.devices()
    checkpoint = write_random_checkpoint(Path(tempfile.mkdtemp()) / "ckpt", MODEL_CONFIG, 7)
    batches = [_wide_batch(), jax.tree.map(lambda x: x[::-1], _wide_batch())]
    kept = lambda s: (
        (s.policy, s.value_head, s.teacher, s.opt_state, s.snapshots, jax.random.key_data(s.key))
    )

    defs, state = build_state(checkpoint, CONFIG)
    reference_metrics = []
    for batch in batches:
        state, metrics = update_step(state, batch, defs, CONFIG)
        reference_metrics.append(jax.tree.map(np.asarray, metrics))
    reference = jax.tree.map(np.asarray, kept(state))
    report = {}
    for data, fsdp in MESHES:
        mesh = make_mesh(data, fsdp)
        defs, state = build_state(checkpoint, CONFIG)
        state_sharding = state_shardings(state, mesh, min_shard_elements=0)
        batch_sharding = batch_shardings(batches[0], mesh)
        step = sharded_update_step(defs, CONFIG, mesh, state_sharding, batch_sharding)
        state = jax.device_put(state, state_sharding)
        metric_gaps = []
        for batch, expected in zip(batches, reference_metrics, strict=True):
            state, metrics = step(state, jax.device_put(batch, batch_sharding))
            metric_gaps += [abs(float(metrics[k]) - float(expected[k])) for k in expected]
        gaps = jax.tree.map(
            lambda a, b: float(np.max(np.abs(np.asarray(a) - b), initial=0.0)),
            kept(state),
            reference,
        )
        shards = state.policy["language_model"]["layers"][0]["mlp"]["up_proj"]["lora_b"][...]
        report[f"{data}x{fsdp}"] = {
            "param_gap": max(jax.tree.leaves(gaps)),  # the PRNG key's bits too
            "metric_gap": max(metric_gaps),
            "compilations": step._cache_size(),
            # [4, 64] lora_b: rows per device of the fsdp-sharded dimension.
            "lora_b_shard": list(shards.addressable_shards[0].data.shape),
            "env_shard": batch_sharding.reward.shard_shape((2, 8))[1],
        }
    try:
        batch_shardings(make_batch(0), make_mesh(8, 1))  # 2 envs over 8 devices
        report["envs_error"] = None
    except ValueError as error:
        report["envs_error"] = str(error)
    return report


@pytest.mark.slow
def test_sharded_step_equals_one_device_step_on_eight_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for data, fsdp in MESHES:
        result = report[f"{data}x{fsdp}"]
        assert result["param_gap"] < 1e-5, (data, fsdp, result)
        assert result["metric_gap"] < 1e-5, (data, fsdp, result)
        assert result["compilations"] == 1, (data, fsdp, result)
        assert result["lora_b_shard"] == [4, 64 // fsdp], (data, fsdp, result)
        assert result["env_shard"] == 8 // (data * fsdp), (data, fsdp, result)
    assert "envs=2, not a multiple of data*fsdp=8" in report["envs_error"]


if __name__ == "__main__":
    print(json.dumps(_compare_on_eight_devices()))
