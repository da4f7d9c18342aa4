"""Checkpoints of the whole training state on orbax-checkpoint: async, atomic, verified.

A checkpoint is one orbax step directory with two items, both written by orbax's standard
handlers: `state`, the pytree's leaves as a flat dict of arrays (`StandardSave`: each process
writes its own shards, so a multi-host sharded state is saved without gathering it; typed PRNG
keys are stored as their raw key data), and `meta` (`JsonSave`), the run's fingerprint, the
caller's host-side metadata and, per leaf, its tree path, shape, dtype and a checksum. The
finite check and the checksums run on the devices, where the arrays live: only one flag and one
word per leaf come to the host. Orbax writes into a temporary directory and renames it when
complete, so a kill at any moment leaves either the previous checkpoint or the new one; the
checksums catch what the rename cannot (a truncated or overwritten file later on), and `restore`
then falls back to an older step.
The tree's structure never goes to disk: `restore` rebuilds it from `like`, the caller's state of
the same shape, so any pytree of arrays round-trips bitwise (flax struct dataclasses, `nnx.State`,
optax states, typed keys).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

# 3: every leaf an orbax array, checksums computed on the devices. 1 and 2 (small leaves packed
# into one byte array, host checksums) are read by tools/convert_checkpoint.py, not here.
FORMAT_VERSION = 3
_CONVERT = "tools/convert_checkpoint.py"
_STATE, _META = "state", "meta"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a step directory being written


class CheckpointError(Exception):
    """A checkpoint cannot be written or read; its `str` is one line for the user."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (unreadable newest step, fallen back to an older one)."""


class _UnreadableCheckpoint(CheckpointError):
    """A step whose files are missing, truncated or fail their checksums (restore falls back)."""


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """What `meta` records of one leaf (and what `like` must match)."""

    path: str  # `jax.tree_util.keystr` of the leaf's path
    shape: tuple[int, ...]
    dtype: str  # e.g. "float32", "key<fry>"
    key_impl: str | None  # the PRNG implementation of a typed key leaf

    def describe(self) -> str:
        return f"{self.path} of shape {self.shape} {self.dtype}"


class Checkpointer:
    """Saves and restores `(step, tree, metadata)` under `directory`, one subdirectory per step.

    `fingerprint` (a JSON object: model config, mode, trainable structure...) is written with every
    checkpoint; `restore` refuses one written under a different fingerprint. Retention keeps the
    last `keep_last` steps plus the best `keep_best` by `metrics[best_metric]` (higher is better).
    With `async_save` a save returns once the arrays are copied off the device; `wait()` blocks
    until the write is durable, and a failed write surfaces there or at the next `save`.
    `read_only` is for readers of a directory a run may be writing (eval, export): they neither
    save nor tidy up, so they never remove the run's write in progress.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        fingerprint: Mapping[str, Any],
        keep_last: int = 3,
        keep_best: int = 1,
        best_metric: str = "success_rate",
        async_save: bool = True,
        read_only: bool = False,
    ) -> None:
        if not _is_count(keep_last) or keep_last < 1:
            raise ValueError(f"keep_last={keep_last!r}: need an int >= 1")
        if not _is_count(keep_best) or keep_best < 0:
            raise ValueError(f"keep_best={keep_best!r}: need an int >= 0")
        self.directory = Path(directory).expanduser().absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {self.directory} is a file")
        self._fingerprint = _json_object("fingerprint", fingerprint)
        self._best_metric = best_metric
        self._tracks_best = keep_best > 0
        self._read_only = read_only
        self._pending_step: int | None = None  # the step whose async write may still be running
        self._unreadable_steps: set[int] = set()  # found by `restore`; removed by the next save
        policies: list[Any] = [ocp_managers.LatestN(n=keep_last)]
        if keep_best:
            policies.append(ocp_managers.BestN(get_metric_fn=self._metric_of, n=keep_best))
        self._options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp_managers.AnyPreservationPolicy(policies),
            best_fn=self._metric_of if keep_best else None,
            best_mode="max",
            create=False,  # made by the first save: `restore` reports a missing directory
            enable_async_checkpointing=async_save,
            save_root_metadata=False,
        )
        self._manager = self._new_manager()
        if not read_only:
            self._remove_partial_writes()  # a killed run's

    def _new_manager(self) -> ocp.CheckpointManager:
        try:
            return ocp.CheckpointManager(
                self.directory, options=self._options, handler_registry=_handler_registry()
            )
        except (OSError, ValueError) as error:
            raise CheckpointError(
                f"cannot open checkpoint directory {self.directory}: {_reason(error)}"
            ) from error

    # ----------------------------------------------------------------------------------- save
    def save(
        self,
        step: int,
        tree: Any,
        *,
        metadata: Mapping[str, Any],
        metrics: Mapping[str, Any] | None = None,
    ) -> bool:
        """Launches the write of `tree` as checkpoint `step`; False (nothing written) if a floating
        leaf is not finite. Raises `CheckpointError` if this or the previous write fails (earlier
        checkpoints stay as they were). Blocks while orbax copies `tree` off the devices (so the
        caller may donate its buffers next); the file writes run in the background."""
        if not _is_count(step) or step < 0:
            raise ValueError(f"step={step!r}: need an int >= 0")
        if self._read_only:
            raise CheckpointError(f"checkpoint directory {self.directory} is opened read-only")
        metadata = _json_object("metadata", metadata)
        leaves, specs = _flatten(tree)
        for leaf, spec in zip(leaves, specs, strict=True):
            if isinstance(leaf, jax.ShapeDtypeStruct):
                raise ValueError(f"checkpoint leaf {spec.path} is abstract: save needs arrays")
        stored = [_stored_array(x) for x in leaves]
        finite, checksums = _digest(stored)
        if not finite:
            return False
        self.wait()
        self._remove_partial_writes()
        self._drop_unreadable_steps()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(
                f"cannot create checkpoint directory {self.directory}: {_reason(error)}"
            ) from error
        if step in self._manager.all_steps():
            raise CheckpointError(f"checkpoint {self._step_dir(step)} already exists")
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": self._fingerprint,
            "metadata": metadata,
            "leaves": [
                {**dataclasses.asdict(spec), "checksum": checksum}
                for spec, checksum in zip(specs, checksums, strict=True)
            ],
        }
        # Orbax refuses empty arrays (a zero-capacity buffer); `restore` makes them from `like`.
        arrays = {_leaf_name(i): x for i, x in enumerate(stored) if x.size}
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{_STATE: ocp.args.StandardSave(arrays), _META: ocp.args.JsonSave(meta)}
                ),
                metrics=self._metric_record(metrics),
                force=True,
            )
        except Exception as error:  # orbax raises many kinds; the user needs one line
            self._forget_failed_write()
            raise CheckpointError(
                f"could not write checkpoint {self._step_dir(step)}: {_reason(error)}"
            ) from error
        self._pending_step = step
        return True

    def wait(self) -> None:
        """Blocks until the last save is durable; `CheckpointError` if it failed."""
        step, self._pending_step = self._pending_step, None
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            self._forget_failed_write()
            where = self._step_dir(step) if step is not None else self.directory
            raise CheckpointError(
                f"could not write checkpoint {where}: {_reason(error)}"
            ) from error

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ listing
    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the highest `best_metric` among those kept, None if none has it."""
        if not self._tracks_best:
            return None
        step = self._manager.best_step()
        if step is None or self._metric_of(self._manager.metrics(step)) == -math.inf:
            return None
        return step

    # ------------------------------------------------------------------------------ restore
    def restore(self, like: Any, step: int | None = None) -> tuple[int, Any, dict[str, Any]]:
        """`(step, tree, metadata)` of checkpoint `step` (default: the newest readable one), with
        `like`'s structure, dtypes and shardings. An unreadable newest step is reported with a
        `CheckpointWarning` and the one before it is tried; an explicit unreadable `step` raises."""
        if step is not None and (not _is_count(step) or step < 0):
            raise ValueError(f"step={step!r}: need an int >= 0")
        self.wait()
        if not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory {self.directory}")
        self._manager.reload()
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoints in {self.directory}")
        like_leaves, like_specs = _flatten(like)
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"no checkpoint {step} in {self.directory} (it has {_list(steps)})"
                )
            return step, *self._restore_step(step, like, like_leaves, like_specs)
        reasons = []
        for candidate in reversed(steps):
            try:
                return candidate, *self._restore_step(candidate, like, like_leaves, like_specs)
            except _UnreadableCheckpoint as error:
                self._unreadable_steps.add(candidate)
                reasons.append(str(error))
                warnings.warn(f"{error}; trying the one before", CheckpointWarning, stacklevel=2)
        raise CheckpointError(f"no readable checkpoint in {self.directory}: {reasons[-1]}")

    def _restore_step(
        self, step: int, like: Any, like_leaves: list[Any], like_specs: list[_Leaf]
    ) -> tuple[Any, dict[str, Any]]:
        where = self._step_dir(step)
        try:
            meta = self._manager.restore(
                step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
            )[_META]
            version = meta["format"]
            if version == FORMAT_VERSION:
                stored = [_Leaf(**_spec_fields(leaf)) for leaf in meta["leaves"]]
                checksums = [int(leaf["checksum"]) for leaf in meta["leaves"]]
                fingerprint, metadata = meta["fingerprint"], meta["metadata"]
        except Exception as error:
            raise _UnreadableCheckpoint(
                f"checkpoint {where} is unreadable: {_reason(error)}"
            ) from error
        if version in (1, 2):
            raise CheckpointError(
                f"checkpoint {where} has format {version} (packed leaves): convert it with "
                f"`python {_CONVERT} {self.directory}`"
            )
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {where} has format {version!r}, this version reads format {FORMAT_VERSION}"
            )
        difference = _first_difference(fingerprint, self._fingerprint)
        if difference is not None:
            key, saved, current = difference
            raise CheckpointError(
                f"checkpoint at {where} was written for {key}={saved}, this run has {current}"
            )
        _check_structure(where, stored, like_specs)
        targets = [_restore_target(x, spec) for x, spec in zip(like_leaves, stored, strict=True)]
        target = {
            _leaf_name(i): leaf_target
            for i, (leaf_target, spec) in enumerate(zip(targets, stored, strict=True))
            if math.prod(spec.shape)
        }
        try:
            arrays = self._manager.restore(
                step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)})
            )[_STATE]
        except Exception as error:
            # Orbax names the arrays by their key in the flat dict: name them by tree path.
            reason = re.sub(r"leaf_(\d{6})", lambda m: stored[int(m[1])].path, _reason(error))
            raise _UnreadableCheckpoint(f"checkpoint {where} is unreadable: {reason}") from error
        data = [
            arrays[_leaf_name(i)] if _leaf_name(i) in target else _empty_like(targets[i])
            for i in range(len(stored))
        ]
        _, restored_checksums = _digest(data)
        for spec, expected, got in zip(stored, checksums, restored_checksums, strict=True):
            if got != expected:
                raise _UnreadableCheckpoint(
                    f"checkpoint {where} is corrupt: {spec.path} does not match its checksum"
                )
        leaves = [_loaded_leaf(x, spec) for x, spec in zip(data, stored, strict=True)]
        tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
        return tree, metadata

    # ----------------------------------------------------------------------------- helpers
    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def _metric_of(self, metrics: Mapping[str, Any] | None) -> float:
        value = _finite_float((metrics or {}).get(self._best_metric))
        return -math.inf if value is None else value

    def _metric_record(self, metrics: Mapping[str, Any] | None) -> dict[str, float] | None:
        """What orbax stores for retention: the best metric if finite, `{}` if not (ranked
        last), nothing when keep-best is off."""
        if not self._tracks_best:
            return None
        value = _finite_float((metrics or {}).get(self._best_metric))
        return {} if value is None else {self._best_metric: value}

    def _forget_failed_write(self) -> None:
        """After a failed write: a fresh orbax manager (the old one counted the failed step,
        dropped from its list the steps it meant to delete, and may still hold background work
        whose errors would surface in unrelated calls), and the partial write's space freed."""
        try:
            self._manager.close()
        except Exception:  # the error at hand, already reported
            pass
        self._remove_partial_writes()
        self._manager = self._new_manager()

    def _remove_partial_writes(self) -> None:
        """Deletes orbax's temporary directories: a killed or failed write's (never read as
        checkpoints, but they take space). Called with no write of ours in progress (at start-up
        and before each save; a failed write can still be creating its directory when it is
        reported, so the next save sweeps again)."""
        if self.directory.is_dir():
            for leftover in self.directory.glob(f"*{_TMP_SUFFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def _drop_unreadable_steps(self) -> None:
        """Deletes the unreadable steps `restore` skipped: the run has moved on from them, and
        they would otherwise shadow the steps it writes next."""
        for step in sorted(self._unreadable_steps):
            if step in self._manager.all_steps():
                warnings.warn(
                    f"deleting unreadable checkpoint {self._step_dir(step)}",
                    CheckpointWarning,
                    stacklevel=3,
                )
                self._manager.delete(step)
        self._unreadable_steps.clear()


# ------------------------------------------------------------------------------- leaves
def _flatten(tree: Any) -> tuple[list[Any], list[_Leaf]]:
    """The leaves of `tree` in pytree order, with what `meta` records of each."""
    paths_and_leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    leaves, specs = [], []
    for path, leaf in paths_and_leaves:
        name = jax.tree_util.keystr(path)
        if not isinstance(leaf, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct):
            raise ValueError(
                f"checkpoint leaf {name} is a {type(leaf).__name__}: need jax or numpy arrays"
            )
        is_key = jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        key_impl = None
        if is_key and isinstance(leaf, jax.Array):
            key_impl = str(jax.random.key_impl(leaf))
        leaves.append(leaf)
        specs.append(_Leaf(name, tuple(leaf.shape), str(leaf.dtype), key_impl))
    return leaves, specs


def _stored_array(leaf: Any) -> Any:
    """What orbax writes for a leaf: the raw data of a typed key, the array otherwise."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(leaf)
    return np.asarray(leaf) if isinstance(leaf, np.generic) else leaf


def _restore_target(like_leaf: Any, spec: _Leaf) -> Any:
    """Orbax's restore target for one leaf: numpy stays numpy; a jax leaf (or an abstract one)
    becomes a `ShapeDtypeStruct` with its sharding, key data for a typed key."""
    if isinstance(like_leaf, np.ndarray | np.generic):
        return np.asarray(like_leaf)
    is_key = spec.key_impl is not None
    abstract = jax.eval_shape(jax.random.key_data, like_leaf) if is_key else like_leaf
    sharding = getattr(like_leaf, "sharding", None)
    if is_key and isinstance(like_leaf, jax.Array):
        sharding = jax.random.key_data(like_leaf).sharding
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(abstract.shape, abstract.dtype, sharding=sharding)


def _empty_like(target: Any) -> Any:
    """An empty leaf (orbax stores none) as `_restore_target` describes it."""
    if isinstance(target, np.ndarray):
        return np.zeros_like(target)
    return jnp.zeros(target.shape, target.dtype, device=target.sharding)


def _loaded_leaf(array: Any, spec: _Leaf) -> Any:
    """The restored leaf, typed back into a PRNG key if it was one."""
    if spec.key_impl is not None:
        return jax.random.wrap_key_data(array, impl=spec.key_impl)
    return array


def _check_structure(where: Path, stored: list[_Leaf], expected: list[_Leaf]) -> None:
    if len(stored) != len(expected):
        raise CheckpointError(
            f"checkpoint {where} holds {len(stored)} arrays, this run's state has {len(expected)}"
        )
    for saved, current in zip(stored, expected, strict=True):
        # An abstract key leaf in `like` has no implementation to compare.
        same_impl = current.key_impl is None or current.key_impl == saved.key_impl
        if (saved.path, saved.shape, saved.dtype) != (
            current.path,
            current.shape,
            current.dtype,
        ) or not same_impl:
            raise CheckpointError(
                f"checkpoint {where} has {saved.describe()}, this run has {current.describe()}"
            )


def _leaf_name(index: int) -> str:
    return f"leaf_{index:06d}"


def _spec_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "path": str(record["path"]),
        "shape": tuple(int(n) for n in record["shape"]),
        "dtype": str(record["dtype"]),
        "key_impl": record["key_impl"],
    }


# ------------------------------------------------------------------------------- digest
def _digest(leaves: list[Any]) -> tuple[bool, list[int]]:
    """`(every floating value finite, a checksum of each leaf)`, computed where the leaves live:
    only a flag and one 32-bit word per leaf reach the host, so a sharded state is never
    gathered. One small program per leaf shape (a state has a few dozen), not one program per
    state structure (seconds to compile for hundreds of leaves)."""
    digests = jax.device_get([_leaf_digest(jnp.asarray(x)) for x in leaves])
    return all(bool(finite) for finite, _ in digests), [int(c) for _, c in digests]


@jax.jit
def _leaf_digest(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    finite = jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.array(True)
    return finite, _checksum(x)


def _checksum(x: jax.Array) -> jax.Array:
    """A position-weighted sum of the leaf's words mod 2^32. The weights are odd, so changing any
    one word changes the sum; moving words around changes it too."""
    words = _words(x).reshape(-1)
    index = jnp.arange(words.size, dtype=jnp.uint32)
    weights = (index * jnp.uint32(0x9E3779B1)) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(words * weights, dtype=jnp.uint32) + jnp.uint32(words.size)


def _words(x: jax.Array) -> jax.Array:
    """The leaf's bits as uint32 words (narrower dtypes widened, wider ones split)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = x.dtype.itemsize * 8
    if bits >= 32:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {8: jnp.uint8, 16: jnp.uint16}[bits]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


# ------------------------------------------------------------------------- JSON and misc
def _json_object(name: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """`value` as it will read back from JSON (tuples become lists), or one ValueError line."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a JSON object (a dict), got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} is not JSON-serialisable: {error}") from None


def _flat_items(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping) and tree:
        items: dict[str, Any] = {}
        for key, value in tree.items():
            items.update(_flat_items(value, f"{prefix}{key}."))
        return items
    return {prefix[:-1]: tree}


def _first_difference(saved: Any, current: Any) -> tuple[str, str, str] | None:
    """`(dotted key, saved value, current value)` of the first difference, in this run's key
    order then the checkpoint's; None when equal."""
    saved_items, current_items = _flat_items(saved), _flat_items(current)
    missing = object()
    for key in [*current_items, *(k for k in saved_items if k not in current_items)]:
        old, new = saved_items.get(key, missing), current_items.get(key, missing)
        if old != new or type(old) is not type(new):
            show = lambda v: "<absent>" if v is missing else json.dumps(v)
            return key, show(old), show(new)
    return None


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(_STATE, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
    registry.add(_STATE, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
    registry.add(_META, ocp.args.JsonSave, ocp.JsonCheckpointHandler)
    registry.add(_META, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
    return registry


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite_float(value: Any) -> float | None:
    """A metric as a float (Python, numpy or jax scalar), None if absent or not finite."""
    if isinstance(value, jax.Array | np.ndarray | np.generic) and value.shape == ():
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _reason(error: BaseException) -> str:
    """One line from an exception: the first line of its innermost cause (orbax wraps the
    tensorstore error that names the file in messages that span many lines)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _list(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 8 else f"{steps[0]}..{steps[-1]}"
