"""Checkpoints: a bitwise round trip of a real `TrainState` and a `RolloutState` (typed keys, empty
leaves, bfloat16, numpy leaves), retention of the last K plus the best, refusal of another model's
checkpoint, no non-finite state saved, fallback past a corrupt newest checkpoint, write errors
that lose nothing, clear errors for bad input, and (slow) SIGKILL at several points of an async
save, after which the previous or the new step restores bitwise.

The kill test's worker runs `_WORKER` in a subprocess; it loads `checkpoint.py` by its file path
so that it does not pay for importing the whole package."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from _train_cases import MODEL_CONFIG, build_state
from etils.epath import gpath
from flax import struct
from orbax.checkpoint._src.path import atomicity  # the commit (rename) step, to make it fail

from gtr_turbo_jax.envs.wrappers import EpisodeStatisticsState
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.rollout.multiturn import RolloutState
from gtr_turbo_jax.train import checkpoint as checkpoint_module
from gtr_turbo_jax.train.checkpoint import Checkpointer, CheckpointError, CheckpointWarning
from gtr_turbo_jax.train.config import UpdateConfig

# SFT mode: the state has every part (snapshots ring, DAgger buffer, injected hyperparameters).
CONFIG = UpdateConfig(mode="turbo_sft", snapshot_capacity=2, dagger_capacity=3)
FINGERPRINT = {
    "model": {"text": {"hidden_size": MODEL_CONFIG.text.hidden_size, "layers": 2}},
    "mode": "turbo_sft",
    "trainable": ["lora"],
}


@struct.dataclass
class GridState:
    """A stand-in env state: the kinds of leaves real env states hold."""

    grid: jax.Array  # int8
    player: jax.Array  # int32 [2]
    done: jax.Array  # bool


def rollout_state(seed: int, num_envs: int = 3) -> RolloutState:
    rng = np.random.default_rng(seed)
    env_state = GridState(
        grid=jnp.asarray(rng.integers(0, 5, (num_envs, 6, 6)), jnp.int8),
        player=jnp.asarray(rng.integers(0, 6, (num_envs, 2)), jnp.int32),
        done=jnp.asarray(rng.random(num_envs) < 0.5),
    )
    return RolloutState(
        env_state=EpisodeStatisticsState(
            env_state=env_state,
            episode_return=jnp.asarray(rng.standard_normal(num_envs), jnp.float32),
            episode_length=jnp.asarray(rng.integers(0, 9, num_envs), jnp.int32),
        ),
        obs={
            "image": jnp.asarray(rng.integers(0, 256, (num_envs, 8, 8, 3)), jnp.uint8),
            "scale": jnp.asarray(rng.standard_normal((num_envs, 4)), jnp.bfloat16),
            "prompt_ids": rng.integers(0, 100, (num_envs, 5)).astype(np.int32),  # host numpy
        },
        history=jnp.zeros((num_envs, 0), jnp.int32),  # K = 0: an empty leaf
        key=jax.random.key(seed + 100),
    )


def tiny_tree(step: int) -> dict:
    """A small tree whose content depends on `step`."""
    # 4 KiB: above OCDBT's inline limit, so `w` has its own data file (`largest_data_file`).
    w = jnp.arange(1024, dtype=jnp.float32).reshape(32, 32) + step
    return {"w": w, "n": jnp.int32(step), "key": jax.random.key(step)}


def raw(x) -> np.ndarray:
    """A leaf as comparable numpy (a typed key as its key data)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def assert_bitwise_equal(got, expected) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        a, b = raw(a), raw(b)
        assert a.tobytes() == b.tobytes()


def kept_steps(metrics: list[float | None], keep_last: int, keep_best: int) -> list[int]:
    """Reference retention over steps 1..n: the last `keep_last` plus the `keep_best` highest
    finite metrics (the later step wins a tie)."""
    steps = list(range(1, len(metrics) + 1))
    scored = [
        (m, s) for s, m in zip(steps, metrics, strict=True) if m is not None and math.isfinite(m)
    ]
    best = [s for _, s in sorted(scored)[len(scored) - keep_best :]] if keep_best else []
    return sorted(set(steps[-keep_last:]) | set(best))


def largest_data_file(directory: Path) -> Path:
    """The biggest array data file orbax wrote for checkpoint `directory` (holds `w`)."""
    files = (directory / "state" / "ocdbt.process_0" / "d").iterdir()
    return max(files, key=lambda p: p.stat().st_size)


@pytest.fixture(scope="module")
def train_states(tmp_path_factory):
    """A real `TrainState` with values off their initial ones, and a restore target of the same
    structure whose values all differ (zeros, another key)."""
    weights = write_random_checkpoint(
        tmp_path_factory.mktemp("checkpoint") / "model", MODEL_CONFIG, 7
    )
    _, state = build_state(weights, CONFIG, seed=0)
    saved = state.replace(
        key=jax.random.split(state.key)[1],
        update_count=jnp.int32(7),
        snapshot_valid=jnp.array([True, False]),
        opt_state=jax.tree.map(
            lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, state.opt_state
        ),
    )
    is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
    like = jax.tree.map(lambda x: jax.random.key(99) if is_key(x) else jnp.zeros_like(x), saved)
    return saved, like


def test_round_trip_is_bitwise(tmp_path, train_states):
    saved, like = train_states
    tree = {"train": saved, "rollout": rollout_state(0)}
    like_tree = {"train": like, "rollout": rollout_state(1)}
    metadata = {"env_steps": 1234, "config": {"lr": 1e-5, "mode": "turbo_sft"}, "offsets": [0, 3]}
    with Checkpointer(tmp_path / "ckpt", fingerprint=FINGERPRINT) as checkpointer:
        assert checkpointer.save(40, tree, metadata=metadata, metrics={"success_rate": 0.25})
        checkpointer.wait()
        step, restored, restored_metadata = checkpointer.restore(like_tree)
    assert step == 40 and restored_metadata == metadata
    assert type(restored["train"]) is type(saved)
    assert type(restored["rollout"].env_state.env_state) is GridState
    assert_bitwise_equal(restored, tree)
    assert restored["train"].key.dtype == saved.key.dtype  # a typed key again
    assert isinstance(restored["rollout"].obs["prompt_ids"], np.ndarray)
    for got, target in zip(jax.tree.leaves(restored), jax.tree.leaves(like_tree), strict=True):
        if isinstance(target, jax.Array):
            assert got.sharding == target.sharding
    # A fresh Checkpointer (a resumed run) reads the same.
    step, again, _ = Checkpointer(tmp_path / "ckpt", fingerprint=FINGERPRINT).restore(like_tree)
    assert step == 40
    assert_bitwise_equal(again, tree)


def mixed_tree(step: int) -> dict:
    """Every kind of leaf: big and small, bfloat16, bool, empty, host numpy, a typed key."""
    return {
        **tiny_tree(step),
        "big": jnp.arange((1 << 18) + 1, dtype=jnp.float32) * step,
        "half": jnp.asarray([1.5, -2.25], jnp.bfloat16) * step,
        "flags": jnp.asarray([True, False, step % 2 == 0]),
        "empty": jnp.zeros((0, 4), jnp.int32),
        "host": np.arange(5, dtype=np.int8) + step,
    }


def mixed_like() -> dict:
    like = jax.tree.map(jnp.zeros_like, {**mixed_tree(0), "key": jax.random.key(0)})
    return {**like, "host": np.zeros(5, np.int8)}


def test_every_leaf_is_an_orbax_array_copied_before_save_returns(tmp_path):
    tree = mixed_tree(3)
    expected = mixed_tree(3)
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as checkpointer:
        checkpointer.save(1, tree, metadata={})
        # The caller may donate its buffers once `save` returns (the next update does).
        tree["w"].delete()
        tree["big"].delete()
        checkpointer.wait()
        meta = json.loads((tmp_path / "1" / "meta" / "metadata").read_text())
        assert meta["format"] == 3
        stored = ocp.StandardCheckpointer().metadata(tmp_path / "1" / "state").item_metadata
        names = {spec["path"]: f"leaf_{i:06d}" for i, spec in enumerate(meta["leaves"])}
        assert set(stored) == {names[f"['{k}']"] for k in expected if k != "empty"}
        assert stored[names["['half']"]].dtype == jnp.bfloat16
        assert tuple(stored[names["['key']"]].shape) == (2,)  # the key's data
        _, restored, _ = checkpointer.restore(mixed_like())
    assert_bitwise_equal(restored, expected)
    assert isinstance(restored["host"], np.ndarray)


def reference_checksum(x) -> int:
    """`_checksum` in numpy: sum of words * odd position weights (+ the word count) mod 2^32."""
    x = raw(x)
    if x.dtype == np.bool_:
        words = x.astype(np.uint64)
    else:
        unsigned = {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]
        words = np.ascontiguousarray(x).view(unsigned).astype(np.uint64)
    words = words.reshape(-1)
    weights = (np.arange(words.size, dtype=np.uint64) * 0x9E3779B1 % 2**32) * 2 + 1
    return int((int((words * (weights % 2**32) % 2**32).sum()) + words.size) % 2**32)


def test_checksums_match_a_numpy_transcription_and_see_one_changed_word():
    leaves = [raw(x) for x in jax.tree.leaves(mixed_tree(5))]
    finite, checksums = checkpoint_module._digest(leaves)
    assert finite
    assert checksums == [reference_checksum(x) for x in leaves]
    w = np.asarray(mixed_tree(5)["w"]).copy()
    for index, bit in [(0, 0), (17, 31), (1023, 7)]:  # one bit anywhere, the top one included
        flipped = w.view(np.uint32).copy()
        flipped.reshape(-1)[index] ^= np.uint32(1 << bit)
        assert checkpoint_module._digest([flipped.view(np.float32)])[1] != checksums[:1]
    swapped = w.copy()
    swapped[0, :2] = swapped[0, 1::-1]
    assert checkpoint_module._digest([swapped])[1] != checksums[:1]


def write_format_2(directory: Path, step: int, tree: dict, metrics: dict) -> None:
    """A checkpoint as gtr_turbo_jax wrote it before format 3: the leaves up to 1 MiB packed into
    one byte array, CRC-32 checksums of the host bytes."""
    leaves, specs = checkpoint_module._flatten(tree)
    host = [raw(x) for x in leaves]
    chunks, records, arrays, end = [], [], {}, 0
    for i, (x, spec) in enumerate(zip(host, specs, strict=True)):
        offset = None
        if 0 < x.nbytes <= 1 << 20:
            chunks.append(np.ascontiguousarray(x).reshape(-1).view(np.uint8))
            offset, end = end, end + x.nbytes
        elif x.size:
            arrays[f"leaf_{i:06d}"] = x
        checksum = zlib.crc32(np.ascontiguousarray(x).reshape(-1).view(np.uint8))
        records.append({**dataclasses.asdict(spec), "checksum": checksum, "packed": offset})
    arrays["packed_leaves"] = np.concatenate(chunks)
    meta = {"format": 2, "fingerprint": FINGERPRINT, "metadata": {"step": step}, "leaves": records}
    manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(best_fn=lambda m: m["success_rate"]),
        handler_registry=checkpoint_module._handler_registry(),
    )
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
        metrics=metrics,
    )
    manager.close()


def test_format_2_is_refused_with_the_conversion_which_then_restores(tmp_path, capsys, load_tool):
    convert_checkpoint = load_tool("convert_checkpoint")
    directory = tmp_path / "checkpoints"
    write_format_2(directory, 4, mixed_tree(4), {"success_rate": 0.75})
    write_format_2(directory, 6, mixed_tree(6), {"success_rate": 0.25})
    with pytest.raises(CheckpointError) as error:
        Checkpointer(directory, fingerprint=FINGERPRINT).restore(mixed_like())
    assert str(error.value) == (
        f"checkpoint {directory / '6'} has format 2 (packed leaves): convert it with "
        f"`python tools/convert_checkpoint.py {directory}`"
    )
    convert_checkpoint.main([str(directory)])
    assert "step 6: 8 leaves converted" in capsys.readouterr().out
    assert (tmp_path / "checkpoints.format2" / "6").is_dir()  # the old ones are kept aside
    with Checkpointer(directory, fingerprint=FINGERPRINT) as checkpointer:
        assert checkpointer.all_steps() == [4, 6] and checkpointer.best_step() == 4
        for step in (4, 6):
            _, restored, metadata = checkpointer.restore(mixed_like(), step=step)
            assert metadata == {"step": step}
            assert_bitwise_equal(restored, mixed_tree(step))
    # A corrupt old checkpoint converts nothing.
    write_format_2(tmp_path / "bad", 1, mixed_tree(1), {})
    data = largest_data_file(tmp_path / "bad" / "1")
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0x40
    data.write_bytes(bytes(content))
    with pytest.raises(SystemExit, match="does not match its checksum; nothing changed"):
        convert_checkpoint.main([str(tmp_path / "bad")])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad",
        "checkpoints",
        "checkpoints.format2",
    ]


@pytest.mark.parametrize("keep_last,keep_best", [(2, 1), (1, 2), (3, 0)])
def test_retention_keeps_last_and_best(tmp_path, keep_last, keep_best):
    metrics = [0.5, 0.9, None, 0.1, math.nan, 0.2, 0.7]
    given = [*metrics[:3], np.float32(0.1), jnp.float32(math.nan), jnp.array(0.2), 0.7]
    checkpointer = Checkpointer(
        tmp_path, fingerprint=FINGERPRINT, keep_last=keep_last, keep_best=keep_best
    )
    for step, value in enumerate(given, start=1):  # Python, numpy and jax scalars
        checkpointer.save(step, tiny_tree(step), metadata={}, metrics={"success_rate": value})
    checkpointer.wait()
    expected = kept_steps(metrics, keep_last, keep_best)
    assert checkpointer.all_steps() == expected
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == expected
    assert checkpointer.latest_step() == 7
    assert checkpointer.best_step() == (2 if keep_best else None)
    checkpointer.close()
    # Reopened (a resumed run), retention goes on from the metrics stored on disk.
    with Checkpointer(
        tmp_path, fingerprint=FINGERPRINT, keep_last=keep_last, keep_best=keep_best
    ) as reopened:
        assert reopened.best_step() == (2 if keep_best else None)
        reopened.save(8, tiny_tree(8), metadata={}, metrics={"success_rate": 0.95})
        reopened.save(9, tiny_tree(9), metadata={}, metrics=None)
        reopened.wait()
        assert reopened.all_steps() == kept_steps([*metrics, 0.95, None], keep_last, keep_best)
        assert reopened.best_step() == (8 if keep_best else None)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as checkpointer:
        checkpointer.save(40, tiny_tree(40), metadata={})
    bigger = {**FINGERPRINT, "model": {"text": {"hidden_size": 128, "layers": 2}}}
    with pytest.raises(CheckpointError) as error:
        Checkpointer(tmp_path, fingerprint=bigger).restore(tiny_tree(0))
    assert str(error.value) == (
        f"checkpoint at {tmp_path / '40'} was written for model.text.hidden_size="
        f"{MODEL_CONFIG.text.hidden_size}, this run has 128"
    )
    other_mode = {**FINGERPRINT, "mode": "ppo", "extra": [1, 2]}
    with pytest.raises(CheckpointError, match=r'written for mode="turbo_sft", this run has "ppo"$'):
        Checkpointer(tmp_path, fingerprint=other_mode).restore(tiny_tree(0))
    fewer = {k: v for k, v in FINGERPRINT.items() if k != "trainable"}
    with pytest.raises(CheckpointError, match=r'trainable=\["lora"\], this run has <absent>$'):
        Checkpointer(tmp_path, fingerprint=fewer).restore(tiny_tree(0))
    # Same fingerprint but a state of another shape: the leaf is named.
    wider = {**tiny_tree(0), "w": jnp.zeros((32, 33), jnp.float32)}
    with pytest.raises(
        CheckpointError, match=r"has \['w'\] of shape \(32, 32\) float32, this run has "
    ):
        Checkpointer(tmp_path, fingerprint=FINGERPRINT).restore(wider)
    # A checkpoint from a later version of this format.
    meta_file = tmp_path / "40" / "meta" / "metadata"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "format": 99}))
    with pytest.raises(CheckpointError, match=r"/40 has format 99, this version reads format 3$"):
        Checkpointer(tmp_path, fingerprint=FINGERPRINT).restore(tiny_tree(0))


@pytest.mark.parametrize(
    "leaf,bad", [("w", math.nan), ("w", math.inf), ("half", -math.inf), ("half", math.nan)]
)
def test_non_finite_state_is_not_saved(tmp_path, leaf, bad):
    tree = {**tiny_tree(1), "half": jnp.ones((4,), jnp.bfloat16), "count": jnp.int32(-1)}
    broken = {**tree, leaf: tree[leaf].at[1].set(bad)}
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as checkpointer:
        assert checkpointer.save(1, tree, metadata={})
        assert not checkpointer.save(2, broken, metadata={})
        checkpointer.wait()
        assert checkpointer.all_steps() == [1]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("_")) == ["1"]


# Orbax's own background coroutines, cut short by the error, are reported when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_newest_falls_back(tmp_path):
    checkpointer = Checkpointer(tmp_path, fingerprint=FINGERPRINT, keep_last=5)
    for step in (1, 2, 3, 4):
        checkpointer.save(step, tiny_tree(step), metadata={"step": step})
    checkpointer.wait()
    # 4: a truncated data file; 3: a flipped byte (only the checksum sees it); 2: no metadata.
    data = largest_data_file(tmp_path / "4")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    data = largest_data_file(tmp_path / "3")
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0x40
    data.write_bytes(bytes(content))
    (tmp_path / "2" / "meta" / "metadata").unlink()

    reader = Checkpointer(tmp_path, fingerprint=FINGERPRINT, keep_last=5)
    with pytest.warns(CheckpointWarning) as caught:
        step, tree, metadata = reader.restore(tiny_tree(0))
    assert (step, metadata) == (1, {"step": 1})
    assert_bitwise_equal(tree, tiny_tree(1))
    messages = [str(w.message) for w in caught if w.category is CheckpointWarning]
    assert len(messages) == 3 and all("\n" not in m for m in messages)
    assert messages[0].startswith(f"checkpoint {tmp_path / '4'} is unreadable")
    assert messages[1] == (
        f"checkpoint {tmp_path / '3'} is corrupt: ['w'] does not match its checksum; "
        "trying the one before"
    )
    assert messages[2].startswith(f"checkpoint {tmp_path / '2'} is unreadable")
    # An explicit corrupt step is an error, not a fallback.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            CheckpointError, match=rf"^checkpoint {tmp_path / '4'} is unreadable: .*\['w'\]"
        ) as error:
            reader.restore(tiny_tree(0), step=4)
        assert "\n" not in str(error.value)
    # The run goes on from 1: the unreadable steps make way for the new ones.
    with pytest.warns(CheckpointWarning, match="deleting unreadable checkpoint"):
        reader.save(2, tiny_tree(20), metadata={"step": 20})
    reader.wait()
    assert reader.all_steps() == [1, 2]
    step, tree, _ = reader.restore(tiny_tree(0))
    assert step == 2
    assert_bitwise_equal(tree, tiny_tree(20))
    # Nothing readable at all.
    (tmp_path / "1" / "meta" / "metadata").unlink()
    (tmp_path / "2" / "meta" / "metadata").unlink()
    with (
        pytest.warns(CheckpointWarning),
        pytest.raises(CheckpointError, match=f"^no readable checkpoint in {tmp_path}: "),
    ):
        reader.restore(tiny_tree(0))


# Orbax's own background coroutines, cut short by the error, are reported when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("stage", ["write", "commit"])
def test_write_error_loses_nothing(tmp_path, monkeypatch, stage):
    """The disk fills up while the background thread writes the files, or when it commits the
    finished write (the rename)."""
    checkpointer = Checkpointer(tmp_path, fingerprint=FINGERPRINT, keep_last=1)
    checkpointer.save(1, tiny_tree(1), metadata={"step": 1})
    checkpointer.wait()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    async def disk_full_async(*args, **kwargs):
        disk_full()

    if stage == "write":  # every file orbax writes from Python (metadata, JSON items)
        monkeypatch.setattr(gpath.PosixGPath, "write_text", disk_full)
    else:
        monkeypatch.setattr(atomicity, "on_commit_callback", disk_full_async)
    with pytest.raises(CheckpointError) as error:
        checkpointer.save(2, tiny_tree(2), metadata={"step": 2})
        checkpointer.wait()
    assert str(error.value) == (
        f"could not write checkpoint {tmp_path / '2'}: [Errno 28] No space left on device"
    )
    # keep_last=1 would have deleted step 1 after a successful save: it is still there.
    assert checkpointer.all_steps() == [1]
    step, tree, metadata = checkpointer.restore(tiny_tree(0))
    assert (step, metadata) == (1, {"step": 1})
    assert_bitwise_equal(tree, tiny_tree(1))
    # Once there is room again, saving goes on.
    monkeypatch.undo()
    checkpointer.save(2, tiny_tree(2), metadata={"step": 2})
    checkpointer.close()
    assert Checkpointer(tmp_path, fingerprint=FINGERPRINT).all_steps() == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]  # the partial write is gone


def test_missing_directory_and_bad_input(tmp_path):
    missing = tmp_path / "runs" / "x" / "checkpoints"
    checkpointer = Checkpointer(missing, fingerprint=FINGERPRINT, async_save=False)
    assert not missing.exists() and checkpointer.latest_step() is None
    with pytest.raises(CheckpointError, match=f"^no checkpoint directory {missing}$"):
        checkpointer.restore(tiny_tree(0))
    missing.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=f"^no checkpoints in {missing}$"):
        checkpointer.restore(tiny_tree(0))
    checkpointer.save(5, tiny_tree(5), metadata={})
    assert (missing / "5" / "commit_success.txt").is_file()  # synchronous: durable on return
    with pytest.raises(CheckpointError, match=f"^no checkpoint 6 in {missing} \\(it has 5\\)$"):
        checkpointer.restore(tiny_tree(0), step=6)
    with pytest.raises(CheckpointError, match=f"^checkpoint {missing / '5'} already exists$"):
        checkpointer.save(5, tiny_tree(5), metadata={})
    with pytest.raises(ValueError, match=r"^metadata is not JSON-serialisable: "):
        checkpointer.save(6, tiny_tree(6), metadata={"x": np.float32(1)})
    with pytest.raises(ValueError, match=r"^step=-1: need an int >= 0$"):
        checkpointer.save(-1, tiny_tree(6), metadata={})
    with pytest.raises(
        ValueError, match=r"^checkpoint leaf \['name'\] is a str: need jax or numpy"
    ):
        checkpointer.save(6, {**tiny_tree(6), "name": "x"}, metadata={})
    with pytest.raises(ValueError, match=r"^keep_last=0: need an int >= 1$"):
        Checkpointer(tmp_path, fingerprint=FINGERPRINT, keep_last=0)
    with pytest.raises(ValueError, match=r"^fingerprint is not JSON-serialisable: "):
        Checkpointer(tmp_path, fingerprint={"config": object()})
    (tmp_path / "file").write_text("")
    with pytest.raises(
        CheckpointError, match=f"^checkpoint directory {tmp_path / 'file'} is a file$"
    ):
        Checkpointer(tmp_path / "file", fingerprint=FINGERPRINT)
    checkpointer.close()


# ---------------------------------------------------------------------------------- SIGKILL
KILL_SIZE = 1 << 20  # float32 values per array: big enough that a write takes a while
KILL_KEEP_LAST = 1  # every save also deletes the previous step: kills land in deletions too
_WORKER = """
import importlib.util, sys
import jax, jax.numpy as jnp, numpy as np
spec = importlib.util.spec_from_file_location("checkpoint", sys.argv[1])
checkpoint = sys.modules["checkpoint"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(checkpoint)
directory, size, keep_last = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
base = np.random.default_rng(0).standard_normal((4, size)).astype(np.float32)
with checkpoint.Checkpointer(directory, fingerprint={}, keep_last=keep_last) as checkpointer:
    for step in range(1, 100):
        tree = {"w": jnp.asarray(base + step), "key": jax.random.key(step), "n": jnp.int32(step)}
        checkpointer.save(step, tree, metadata={"step": step})
        print("launched", step, flush=True)
        checkpointer.wait()
        print("durable", step, flush=True)
"""


def kill_tree(step: int) -> dict:
    """The tree `_WORKER` saves as `step`."""
    base = np.random.default_rng(0).standard_normal((4, KILL_SIZE)).astype(np.float32)
    return {"w": jnp.asarray(base + step), "key": jax.random.key(step), "n": jnp.int32(step)}


def run_and_kill(directory: Path, kill_step: int, delay: float) -> int:
    """Starts the worker, SIGKILLs it `delay` seconds after it launched the save of `kill_step`;
    returns the last step it reported durable."""
    log = open(directory.parent / f"{directory.name}.log", "w")  # noqa: SIM115 (closed below)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WORKER,
            checkpoint_module.__file__,
            str(directory),
            str(KILL_SIZE),
            str(KILL_KEEP_LAST),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    lines = []
    try:
        for line in worker.stdout:
            lines.append(line.split())
            if lines[-1] == ["launched", str(kill_step)]:
                time.sleep(delay)
                worker.kill()
                break
    finally:
        worker.kill()
        rest, _ = worker.communicate()
        log.close()
    lines += [line.split() for line in rest.splitlines()]
    assert ["launched", str(kill_step)] in lines, Path(log.name).read_text()[-2000:]
    return max(int(step) for word, step in lines if word == "durable")


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.08, 0.2, 0.5])
def test_sigkill_during_save_leaves_loadable_checkpoints(tmp_path, delay):
    directory = tmp_path / "checkpoints"
    durable = run_and_kill(directory, kill_step=3, delay=delay)
    assert durable >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # atomic: nothing unreadable may be visible
        checkpointer = Checkpointer(directory, fingerprint={}, keep_last=KILL_KEEP_LAST)
        step, tree, metadata = checkpointer.restore(kill_tree(0))
    assert step >= durable and metadata == {"step": step}
    assert_bitwise_equal(tree, kill_tree(step))
    # The resumed run saves on from there (leftover temporary directories do not get in the way).
    assert checkpointer.save(step + 1, kill_tree(step + 1), metadata={"step": step + 1})
    checkpointer.close()
    assert Checkpointer(directory, fingerprint={}).latest_step() == step + 1
    assert not [p for p in directory.iterdir() if "tmp" in p.name]


def test_read_only_reader_leaves_a_write_in_progress_alone(tmp_path):
    with Checkpointer(tmp_path, fingerprint=FINGERPRINT) as checkpointer:
        checkpointer.save(1, tiny_tree(1), metadata={"step": 1})
    in_progress = tmp_path / "2.orbax-checkpoint-tmp"  # what a writer's next save looks like
    (in_progress / "state").mkdir(parents=True)
    reader = Checkpointer(tmp_path, fingerprint=FINGERPRINT, read_only=True)
    step, tree, _ = reader.restore(tiny_tree(0))
    assert step == 1 and reader.all_steps() == [1]
    assert_bitwise_equal(tree, tiny_tree(1))
    with pytest.raises(CheckpointError, match=f"^checkpoint directory {tmp_path} is opened read"):
        reader.save(3, tiny_tree(3), metadata={})
    reader.close()
    assert (in_progress / "state").is_dir()
    # A writer (a resumed run) removes the leftover.
    Checkpointer(tmp_path, fingerprint=FINGERPRINT).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]


def test_fingerprint_json_round_trip_is_normalised(tmp_path):
    """Tuples in a fingerprint read back as lists: not a difference."""
    with Checkpointer(tmp_path, fingerprint={"shape": (1, 2)}) as checkpointer:
        checkpointer.save(1, tiny_tree(1), metadata={})
    step, _, _ = Checkpointer(tmp_path, fingerprint={"shape": [1, 2]}).restore(tiny_tree(0))
    assert step == 1
    assert json.loads((tmp_path / "1" / "meta" / "metadata").read_text())["fingerprint"] == {
        "shape": [1, 2]
    }
