"""`gtr-turbo plot`: PNG figures of one or more runs' `metrics.jsonl`, overlaid to compare modes.

One figure per metric in `METRICS` (file `<metric>.png`) and an `overview.png` grid of all of them,
over `x` (env steps by default). Conventions:
- run `i` has colour `Ci` in every figure; its label is `rl.mode` from `run_dir/config.json` when
  present, else the run directory's name (runs sharing a label get their directory name appended);
- the training value `<metric>` (logged every update) is a solid line. With `smoothing > 0` the
  smoothed curve (TensorBoard's debiased EMA) is solid and the raw one faint behind it;
- the evaluation value `eval/<metric>` (logged only at evaluation points, on held-out levels) is
  drawn in the run's colour as circles joined by a dashed line, never smoothed;
- each legend entry says which curve it is (`train_label`, `eval_label`): the training success is
  "training success (sampled, episodes by start update, last 200)" (the live window of
  `train.live`: it lags by about one episode), the held-out one "held-out success (greedy, N
  episodes)" with N and greedy / sampled read from the run's `config.json`;
- a metric no run logged (neither key) is skipped; NaN (logged `null`: not finite) is a gap.

`series(records, key, x)` is what a line draws; `metric_figure` returns the figure (Line2D `gid`s
`"<label>|train"`, `"<label>|smoothed"`, `"<label>|eval"`) so tests can read the drawn data.
Figures use matplotlib's object API on the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gtr_turbo_jax.train.live import SUCCESS_WINDOW
from gtr_turbo_jax.train.logger import read_metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

METRICS: tuple[str, ...] = (
    "success_rate",
    "return_mean",
    "kl_mean",
    "valid_rate",
    "thought_len",
    "self_bleu",
    "grounding",
    "no_effect_rate",
)
EVAL_PREFIX = "eval/"
TITLES = {
    "success_rate": "success rate",
    "return_mean": "episode return",
    "kl_mean": "thought KL to the teacher",
    "valid_rate": "valid-reply rate",
    "thought_len": "thought length (words)",
    "self_bleu": "self-BLEU of thoughts",
    "grounding": "thought grounding accuracy",
    "no_effect_rate": "moves without effect",
}
# What the training value of a metric is (legend); the live window is `train.live`'s.
LIVE_WINDOW = f"sampled, episodes by start update, last {SUCCESS_WINDOW}"
TRAIN_KINDS = {
    "success_rate": f"training success ({LIVE_WINDOW})",
    "return_mean": f"training return ({LIVE_WINDOW})",
}
TRAIN_KIND = "training (sampled, per update)"
EVAL_NAMES = {"success_rate": "success", "return_mean": "return"}
X_LABELS = {"env_steps": "env steps", "step": "update", "wall_s": "wall-clock seconds"}
FIGSIZE = (6.4, 4.0)  # inches; at DPI 100 a 640 x 400 PNG
OVERVIEW_PANEL = (4.8, 3.2)  # inches per overview panel
OVERVIEW_COLUMNS = 2
DPI = 100
RAW_ALPHA = 0.25  # the raw curve behind a smoothed one


@dataclass(frozen=True)
class Run:
    """One run directory's records and the label it has in the legends."""

    label: str
    records: list[dict[str, Any]]
    config: Mapping[str, Any] = field(default_factory=dict)  # config.json ({} when absent)


def series(
    records: Sequence[Mapping[str, Any]], key: str, x: str = "env_steps"
) -> tuple[np.ndarray, np.ndarray]:
    """`(xs, ys)` float64 arrays of the records holding both `x` and `key`, in file order.

    A record without either key (eval metrics exist only at eval points), or whose `x` is not a
    finite number, is skipped; a NaN value is kept, so the line shows a gap there.
    """
    points = [
        (float(record[x]), float(record[key]))
        for record in records
        if _is_number(record.get(key)) and _is_number(record.get(x)) and math.isfinite(record[x])
    ]
    if not points:
        return np.zeros((0,)), np.zeros((0,))
    xs, ys = zip(*points)
    return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def smooth(ys: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an EMA with weight `weight` on the past, debiased for its zero
    start. NaN points stay NaN and do not enter the average."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {weight!r}")
    out = np.full(len(ys), np.nan)
    average, count = 0.0, 0
    for i, y in enumerate(ys):
        if math.isnan(y):
            continue
        average = weight * average + (1.0 - weight) * y
        count += 1
        out[i] = average / (1.0 - weight**count)
    return out


def _config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """`run_dir/config.json`, or {} when there is none (or it is unreadable)."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _get(config: Mapping[str, Any], section: str, key: str) -> Any:
    part = config.get(section)
    return part.get(key) if isinstance(part, Mapping) else None


def run_label(run_dir: str | os.PathLike[str]) -> str:
    """`rl.mode` from `run_dir/config.json` when it holds one, else the directory's name."""
    mode = _get(_config(run_dir), "rl", "mode")
    # no (readable) mode: the directory name says which run it is
    return str(mode) if mode else Path(run_dir).resolve().name


def train_label(key: str) -> str:
    """What the training curve of `key` is: the live window for success and return (episodes
    counted by the update they started in, complete cohorts only), else the update's batch."""
    return TRAIN_KINDS.get(key, TRAIN_KIND)


def eval_label(key: str, config: Mapping[str, Any]) -> str:
    """What the evaluation curve of `key` is: "held-out success (greedy, 200 episodes)", with
    the decoding and the number of episodes from the run's config when it has them."""
    temperature = _get(config, "sampling", "eval_temperature")
    episodes = _get(config, "train", "eval_episodes")
    details = []
    if _is_number(temperature):
        details.append("greedy" if temperature <= 0 else f"sampled at T={temperature:g}")
    if _is_number(episodes):
        details.append(f"{episodes:g} episodes")
    name = EVAL_NAMES.get(key, TITLES.get(key, key))
    return f"held-out {name}" + (f" ({', '.join(details)})" if details else "")


def load_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> list[Run]:
    """Each run directory's records and label; labels shared by several runs get the directory
    name appended (three seeds of one mode stay apart in the legend)."""
    if not run_dirs:
        raise ValueError("plot needs at least one run directory")
    labels = [run_label(run_dir) for run_dir in run_dirs]
    counts = Counter(labels)
    runs = []
    for run_dir, label in zip(run_dirs, labels):
        name = Path(run_dir).resolve().name
        if counts[label] > 1 and label != name:
            label = f"{label} ({name})"
        runs.append(Run(label=label, records=read_metrics(run_dir), config=_config(run_dir)))
    return runs


def _has_key(runs: Sequence[Run], key: str) -> bool:
    return any(key in record for run in runs for record in run.records)


def draw_metric(
    ax: Axes, runs: Sequence[Run], key: str, *, x: str = "env_steps", smoothing: float = 0.0
) -> None:
    """Draws `key` (training, solid) and `eval/key` (markers, dashed) of every run on `ax`; the
    legend entries are "<run>: <what the curve is>" (`train_label`, `eval_label`)."""
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        train_name = f"{run.label}: {train_label(key)}"
        xs, ys = series(run.records, key, x)
        if len(xs):
            if smoothing > 0.0:
                ax.plot(
                    xs, ys, color=color, alpha=RAW_ALPHA, label="_raw", gid=f"{run.label}|train"
                )
                ax.plot(
                    xs,
                    smooth(ys, smoothing),
                    color=color,
                    label=train_name,
                    gid=f"{run.label}|smoothed",
                )
            else:
                ax.plot(xs, ys, color=color, label=train_name, gid=f"{run.label}|train")
        eval_xs, eval_ys = series(run.records, EVAL_PREFIX + key, x)
        if len(eval_xs):
            ax.plot(
                eval_xs,
                eval_ys,
                color=color,
                linestyle="--",
                marker="o",
                markersize=4,
                label=f"{run.label}: {eval_label(key, run.config)}",
                gid=f"{run.label}|eval",
            )
    ax.set_title(TITLES.get(key, key))
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.grid(alpha=0.3)


def _new_figure(size: tuple[float, float]) -> Figure:
    # Imported here: `gtr-turbo` commands other than plot never pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: renders without a display
    return figure


def metric_figure(
    runs: Sequence[Run], key: str, *, x: str = "env_steps", smoothing: float = 0.0
) -> Figure | None:
    """The figure of one metric over `x`, every run overlaid; None when no run logged it."""
    if not (_has_key(runs, key) or _has_key(runs, EVAL_PREFIX + key)):
        return None
    figure = _new_figure(FIGSIZE)
    ax = figure.add_subplot()
    draw_metric(ax, runs, key, x=x, smoothing=smoothing)
    ax.legend(fontsize="small")
    return figure


def overview_figure(
    runs: Sequence[Run], keys: Sequence[str], *, x: str = "env_steps", smoothing: float = 0.0
) -> Figure:
    """All `keys` as panels of one figure (`OVERVIEW_COLUMNS` wide); the legend on the first."""
    rows = math.ceil(len(keys) / OVERVIEW_COLUMNS)
    columns = min(len(keys), OVERVIEW_COLUMNS)
    figure = _new_figure((OVERVIEW_PANEL[0] * columns, OVERVIEW_PANEL[1] * rows))
    for index, key in enumerate(keys):
        ax = figure.add_subplot(rows, columns, index + 1)
        draw_metric(ax, runs, key, x=x, smoothing=smoothing)
        if index == 0:
            ax.legend(fontsize="x-small")
    return figure


def plot_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    x: str = "env_steps",
    smoothing: float = 0.0,
    metrics: Sequence[str] = METRICS,
) -> list[Path]:
    """Writes `<metric>.png` for every metric some run logged and `overview.png`, to `out_dir`
    (default: the first run's `plots/`). Returns the paths written, in `metrics` order then the
    overview."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    runs = load_runs(run_dirs)
    if not _has_key(runs, x):
        logged = sorted({key for run in runs for record in run.records for key in record})
        raise ValueError(f"x axis {x!r} is not logged by any run; logged keys: {logged}")
    keys = [key for key in metrics if _has_key(runs, key) or _has_key(runs, EVAL_PREFIX + key)]
    if not keys:
        raise ValueError(
            f"none of the metrics {list(metrics)} (or their {EVAL_PREFIX!r} forms) is logged in "
            f"{[str(run_dir) for run_dir in run_dirs]}"
        )
    out = Path(out_dir) if out_dir is not None else Path(run_dirs[0]) / "plots"
    out.mkdir(parents=True, exist_ok=True)

    written = []
    for key in keys:
        figure = metric_figure(runs, key, x=x, smoothing=smoothing)
        assert figure is not None  # keys holds only logged metrics
        written.append(_save(figure, out / f"{key}.png"))
    written.append(
        _save(overview_figure(runs, keys, x=x, smoothing=smoothing), out / "overview.png")
    )
    return written


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)  # no bbox_inches="tight": the PNG keeps the figure's size
    return path
