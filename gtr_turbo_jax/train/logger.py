"""Run logs: one JSON object per update in `metrics.jsonl`, TensorBoard scalars, optional W&B.

`metrics.jsonl` is the record the rest of the project reads (`read_metrics`, `gtr-turbo plot`):
- one line per `MetricsLogger.log(step, metrics)` call: `{"step": step, <metrics in insertion
  order>}`; numpy / jax scalars (and size-1 arrays) become plain ints and floats, bools become 0/1,
  strings are kept;
- a float that is not finite (NaN, +inf, -inf) is written as JSON `null`: the file stays strict JSON
  (Python's `NaN` literal is not JSON, and jq / browsers reject it) and `read_metrics` reads `null`
  back as NaN, so a diverged value still shows as a gap in the plots rather than vanishing;
- each line is written with one `write`, flushed and `fdatasync`ed, so a kill loses at most the line
  being written. A torn last line is skipped by `read_metrics` and cut off when a logger reopens
  the file, so the next line never glues onto it;
- on resume, `truncate_after(step)` drops every line with a later step, so the resumed run's file
  equals the uninterrupted run's.

TensorBoard scalars go to `run_dir/tb/` through tensorboardX (imported only when asked for; one
warning line and JSONL only if it is missing). Weights & Biases is used only when `wandb=` is given
(the keyword arguments of `wandb.init`) and the package is importable.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"
# Per-level held-out outcomes, a JSON line per evaluation of a training run (`train.run_dir.RunDir.record_evaluation`).
EVAL_LEVELS_FILE = "eval_episodes.jsonl"
TENSORBOARD_DIR = "tb"
STEP_KEY = "step"

JsonValue = int | float | str | None

_log = logging.getLogger(__name__)
_sync = getattr(os, "fdatasync", os.fsync)  # data only: the file's metadata can wait


def to_json_value(key: str, value: Any) -> JsonValue:
    """`value` as a plain JSON value: int, float (non-finite -> None) or str.

    Accepts Python numbers and bools, numpy / jax scalars and size-1 arrays, and strings.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float | np.generic) or hasattr(value, "__array__"):
        array = np.asarray(value)  # a jax array is copied to the host here
        if array.size != 1:
            raise ValueError(
                f"metric {key!r} has shape {array.shape}; accepted: a scalar or a size-1 array"
            )
        kind = array.dtype.kind
        if kind == "b":
            return int(array.item())
        if kind in "iu":
            return int(array.item())
        if kind in "fV":  # "V": ml_dtypes' bfloat16 / float8
            try:
                number = float(array.reshape(()).astype(np.float64))
            except (TypeError, ValueError):
                number = None  # a structured dtype: falls through to the error below
            if number is not None:
                return number if math.isfinite(number) else None
    raise ValueError(
        f"metric {key!r} has a {type(value).__name__} value; accepted: a number, a numpy/jax "
        "scalar or size-1 array, or a string"
    )


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise ValueError(f"step must be an integer, got {step!r}")
    return int(step)


def _split_complete_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete (newline-terminated) lines, and the unterminated tail after the last newline."""
    *lines, tail = data.split(b"\n")
    return lines, tail


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _repair_torn_tail(path: Path) -> None:
    """Make `path` end with a newline: terminate a complete last line, cut off a torn one."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    lines, tail = _split_complete_lines(data)
    with open(path, "r+b") as file:
        if _is_json_object(tail):  # killed between the object and its newline
            file.seek(0, os.SEEK_END)
            file.write(b"\n")
        else:
            file.truncate(len(data) - len(tail))
        file.flush()
        _sync(file.fileno())


def _replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


class MetricsLogger:
    """Writes one record per update to `run_dir/metrics.jsonl`, TensorBoard and (optionally) W&B.

    Args:
      run_dir: the run directory (created if missing). An existing `metrics.jsonl` is appended to;
        call `truncate_after(step)` when resuming from `step` (`truncate_after(-1)` empties it).
      tensorboard: also write TensorBoard scalars under `run_dir/tb/` (tensorboardX).
      wandb: keyword arguments for `wandb.init` (e.g. `{"project": "gtr-turbo"}`); `None` (default)
        never imports wandb. `dir` defaults to `run_dir`.
      fsync: `fdatasync` after every line (one call per update: cheap next to an update).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        tensorboard: bool = True,
        wandb: Mapping[str, Any] | None = None,
        fsync: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._fsync = fsync
        _repair_torn_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # closed by close()
        self._closed = False

        self._tb_writer_class = _import_tensorboardx() if tensorboard else None
        self._tb_writer: Any = None  # opened at the first log, so a resume can set purge_step
        self._tb_purge_step: int | None = None

        self._wandb_run: Any = None
        if wandb is not None:
            self._wandb_run = _init_wandb(self.run_dir, wandb)

    # -- writing -------------------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends `{"step": step, **metrics}` (values made plain) to every sink."""
        if self._closed:
            raise ValueError(f"MetricsLogger for {self.run_dir} is closed")
        step = _check_step(step)
        record: dict[str, JsonValue] = {STEP_KEY: step}
        for key, value in metrics.items():
            if not isinstance(key, str) or key == STEP_KEY:
                raise ValueError(
                    f"metric name {key!r} is not accepted: names are strings other than "
                    f"{STEP_KEY!r} (the step is the first argument of log)"
                )
            record[key] = to_json_value(key, value)

        # One write per line: a kill mid-write tears only this line.
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._fsync:
            _sync(self._file.fileno())

        values = {
            key: math.nan if value is None else value
            for key, value in record.items()
            if key != STEP_KEY
        }
        if self._tb_writer_class is not None:
            numbers = {key: value for key, value in values.items() if not isinstance(value, str)}
            self._log_tensorboard(step, numbers)
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=step)

    def _log_tensorboard(self, step: int, numbers: Mapping[str, int | float]) -> None:
        if self._tb_writer is None:
            tb_dir = self.run_dir / TENSORBOARD_DIR
            # Event files are named by the second and host: a writer reopened within the same
            # second (a resume) would overwrite the last one without a distinct suffix.
            opened_before = len(list(tb_dir.glob("events.out.tfevents.*")))
            self._tb_writer = self._tb_writer_class(
                logdir=str(tb_dir),
                purge_step=self._tb_purge_step,
                filename_suffix=f".{opened_before}",
            )
        for key, value in numbers.items():
            if value is not None and math.isfinite(value):  # a gap, as in the JSONL's null
                self._tb_writer.add_scalar(key, float(value), global_step=step)
        self._tb_writer.flush()

    def truncate_after(self, step: int) -> None:
        """Drops every `metrics.jsonl` line whose step is after `step` (and a torn last line).

        Called when resuming from the checkpoint of `step`: the lines the killed run wrote after
        it are written again by the resumed run. TensorBoard gets `purge_step = step + 1`, which
        tells it to hide the killed run's later events.
        """
        step = _check_step(step)
        if self._closed:
            raise ValueError(f"MetricsLogger for {self.run_dir} is closed")
        self._file.close()
        lines, _torn = _split_complete_lines(self.path.read_bytes())
        kept = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = _parse_line(line, self.path, number)
            if record.get(STEP_KEY, math.inf) <= step:
                kept.append(line + b"\n")
        _replace_atomically(self.path, b"".join(kept))
        self._file = open(self.path, "a", encoding="utf-8")

        self._tb_purge_step = step + 1
        if self._tb_writer is not None:  # reopen: purge_step is written when a writer starts
            self._tb_writer.close()
            self._tb_writer = None

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes every sink; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._file.close()
        if self._tb_writer is not None:
            self._tb_writer.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _import_tensorboardx() -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        _log.warning(
            "tensorboardX is not installed: TensorBoard logs are off (metrics.jsonl is written)"
        )
        return None
    return SummaryWriter


def _init_wandb(run_dir: Path, init_kwargs: Mapping[str, Any]) -> Any:
    try:
        import wandb
    except ImportError:
        _log.warning(
            "W&B logging was asked for but the wandb package is not installed "
            "(pip install wandb); continuing without it"
        )
        return None
    return wandb.init(**{"dir": str(run_dir), **init_kwargs})


def _parse_line(line: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as error:
        raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{number}: not a JSON object")
    return record


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of `run_dir/metrics.jsonl` (or of a `.jsonl` file given directly), in order.

    `null` values come back as NaN. A torn last line (a kill mid-write, or a run still writing) is
    skipped; a bad line anywhere else raises ValueError naming the file and line.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no {METRICS_FILE} in {run_dir}: not a run directory written by `gtr-turbo train` "
            "(or one that has not logged an update yet)"
        )
    lines, tail = _split_complete_lines(path.read_bytes())
    if tail.strip() and _is_json_object(tail):  # complete object, only its newline missing
        lines.append(tail)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse_line(line, path, number)
        records.append({key: math.nan if value is None else value for key, value in record.items()})
    return records
