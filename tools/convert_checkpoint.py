"""Converts a run's checkpoints of format 1 or 2 to format 3 (one orbax array per leaf).

    python tools/convert_checkpoint.py RUN/checkpoints

Formats 1 and 2 (gtr_turbo_jax before 0.2) wrote leaves up to 1 MiB as slices of one byte array
and CRC-32 checksums computed on the host. This reads every step, checks each leaf against its
CRC-32, and writes the same leaves, fingerprint, metadata and retention metrics as format 3 into
`RUN/checkpoints.format3`; then the old directory becomes `RUN/checkpoints.format2` (kept: delete
it once the run resumes) and the new one takes its place. Nothing is changed if a step fails.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from gtr_turbo_jax.train import checkpoint as ckpt


def read_old_step(manager: ocp.CheckpointManager, step: int) -> tuple[dict, list[np.ndarray]]:
    """The old step's meta and its leaves as numpy arrays (typed keys as their key data)."""
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if meta.get("format") not in (1, 2):
        raise ValueError(f"step {step} has format {meta.get('format')!r}, not 1 or 2")
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    arrays = {name: np.asarray(x) for name, x in state["state"].items()}
    packed = arrays.get("packed_leaves", np.zeros(0, np.uint8))
    leaves = []
    for i, record in enumerate(meta["leaves"]):
        shape, dtype = tuple(record["shape"]), np.dtype(_data_dtype(record))
        shape = shape + _key_data_tail(record)
        size = int(np.prod(shape)) * dtype.itemsize
        if record.get("packed") is not None:
            start = record["packed"]
            leaf = packed[start : start + size].view(dtype).reshape(shape).copy()
        elif size == 0:
            leaf = np.zeros(shape, dtype)
        else:
            leaf = arrays[f"leaf_{i:06d}"]
        if zlib.crc32(np.ascontiguousarray(leaf).reshape(-1).view(np.uint8)) != record["checksum"]:
            raise ValueError(f"step {step}: {record['path']} does not match its checksum")
        leaves.append(leaf)
    return meta, leaves


def _data_dtype(record: dict) -> str:
    return "uint32" if record["key_impl"] is not None else record["dtype"]


def _key_data_tail(record: dict) -> tuple[int, ...]:
    if record["key_impl"] is None:
        return ()
    return jax.random.key_data(jax.random.key(0, impl=record["key_impl"])).shape


def convert(directory: Path) -> Path:
    directory = directory.expanduser().absolute()
    target = directory.with_name(directory.name + ".format3")
    backup = directory.with_name(directory.name + ".format2")
    if target.exists() or backup.exists():
        raise SystemExit(f"error: {target} or {backup} exists: remove it first")
    registry = ckpt._handler_registry()
    old = ocp.CheckpointManager(directory, handler_registry=registry)
    steps = sorted(old.all_steps())
    if not steps:
        raise SystemExit(f"error: no checkpoints in {directory}")
    new = ocp.CheckpointManager(
        target,
        # Orbax stores a step's metrics only when it ranks steps; the run ranks them itself.
        options=ocp.CheckpointManagerOptions(
            create=True, save_root_metadata=False, best_fn=lambda metrics: 0.0
        ),
        handler_registry=registry,
    )
    try:
        for step in steps:
            _convert_step(old, new, step)
    except Exception:
        new.close()
        shutil.rmtree(target, ignore_errors=True)
        raise
    new.close()
    old.close()
    directory.rename(backup)
    target.rename(directory)
    return backup


def _convert_step(old: ocp.CheckpointManager, new: ocp.CheckpointManager, step: int) -> None:
    meta, leaves = read_old_step(old, step)
    _, checksums = ckpt._digest(leaves)
    records = [
        {key: record[key] for key in ("path", "shape", "dtype", "key_impl")}
        | {"checksum": checksum}
        for record, checksum in zip(meta["leaves"], checksums, strict=True)
    ]
    new_meta = {**meta, "format": ckpt.FORMAT_VERSION, "leaves": records}
    arrays = {f"leaf_{i:06d}": x for i, x in enumerate(leaves) if x.size}
    new.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(new_meta)
        ),
        metrics=old.metrics(step),
        force=True,
    )
    new.wait_until_finished()
    print(f"step {step}: {len(leaves)} leaves converted")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a run's checkpoints/ directory")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        raise SystemExit(f"error: no checkpoint directory {args.directory}")
    try:
        backup = convert(args.directory)
    except ValueError as error:
        raise SystemExit(f"error: {error}; nothing changed") from None
    print(f"converted {args.directory}; the old checkpoints are in {backup}")


if __name__ == "__main__":
    sys.exit(main())
