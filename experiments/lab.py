"""The learning lab: a grid of modes x seeds x config overrides, all RL from saved warm starts.

    python experiments/lab.py --out DIR --warm-start RUN_OR_MODEL_DIR --env sokoban \
        --modes turbo_kl,ppo --seeds 0,1,2 [--grid NAME:--config.x=1,--config.y=2 ...] \
        [--updates N] [--smoke] [-- --config.a.b=v ...]
    python experiments/lab.py --out DIR --warm-start 'runs/ws{seed}/sft_model' ...   # per seed
    python experiments/lab.py --out DIR --report-only [--modes ...] [--seeds ...] [--grid NAME]

Trains every run `gtr-turbo train --env=ENV --mode=M --seed=S --workdir=DIR/<grid>/<mode>/seed<S>
--config.model.path=WARM --config.warm_start.steps=0 [overrides]`, one after another (a fresh
process each, so one run's memory or crash never reaches the next), seeds outermost: a lab killed
half-way has whole seeds of every grid entry and mode, which pair up. Rerunning the same command
continues: a run with `summary.json` is done and skipped, a run with checkpoints is continued with
`gtr-turbo train --workdir=RUN --resume` (its own config.json), any other run starts afresh.

Then (or with `--report-only`) it reads the runs' `summary.json`, `metrics.jsonl` and
`config.json` and writes DIR/results.md (tables, commands, git commit) and DIR/results.png (held-
out success of the warm start and the trained model per grid entry and mode, mean +- s.e.). The
warm start's success is the evaluation at update 0 of each run (the same held-out levels as the
final one, `RunDir.record_evaluation`), so the gain is paired per seed.

Overrides are applied in this order, later ones winning: the lab's (model.path, warm_start.steps,
`--updates`), those after `--` (every run), the grid entry's. DIR/lab.json records the settings
the lab was started with; a later command with another env, warm start, `--updates`, `--smoke` or
`--` overrides, or a grid name with other overrides, is refused (use another `--out`), so a
results table never mixes runs of different settings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gtr_turbo_jax.train.logger import EVAL_LEVELS_FILE

PROG = "lab"
MODES = ("ppo", "gtr", "turbo_sft", "turbo_kl")  # gtr_turbo_jax.cli's --mode choices
REPO = Path(__file__).resolve().parents[1]
LAB_FILE = "lab.json"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
# Per-level evaluation outcomes, one JSON line per evaluation: {"step": 0, "success": [0, 1, ...]}
# in held-out level order. Where it exists the per-seed gain gets a paired bootstrap interval;
# runs of older trainers fall back to a normal approximation.
EPISODES_FILE = EVAL_LEVELS_FILE
DEFAULT_GRID = "default"
INTERRUPTED = 130
# Flags the lab sets itself for every run: a second value would contradict the run's directory.
OWNED_KEYS = ("--config.rl.mode=", "--config.train.seed=")


class LabError(ValueError):
    """Bad input; `str()` is the one line printed as `lab: error: ...`."""


class Interrupted(Exception):
    """A run stopped by Ctrl-C or a signal: the lab stops too (rerun to continue)."""


class GridEntry(NamedTuple):
    """A named set of config overrides: one row group of the results."""

    name: str
    overrides: tuple[str, ...] = ()


class RunKey(NamedTuple):
    grid: str
    mode: str
    seed: int

    def directory(self, out: Path) -> Path:
        return out / self.grid / self.mode / f"seed{self.seed}"

    def label(self) -> str:
        return f"{self.grid}/{self.mode}/seed{self.seed}"


# -- parsing ----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one `lab: error: ...` line (as every other bad input is)."""

    def error(self, message: str):
        raise LabError(message)


def split_extras(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The lab's own flags, and the overrides after the first `--` (applied to every run)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def check_override(token: str, where: str) -> str:
    """One `--config.KEY=VALUE`; the lab owns the mode and the seed (they name the directory)."""
    if not token.startswith("--config.") or "=" not in token:
        raise LabError(f"{where}: expected --config.KEY=VALUE, got {token!r}")
    if token.startswith(OWNED_KEYS):
        raise LabError(f"{where}: {token!r}: the lab sets the mode and seed (--modes, --seeds)")
    return token


def check_extras(extras: Sequence[str]) -> tuple[str, ...]:
    """The tokens after `--`: config overrides or `--config=FILE[:PRESET]`, nothing else, so
    that they can be checked against the config before any run starts."""
    for token in extras:
        if not token.startswith("--config=") or token == "--config=":
            check_override(token, "after --")
    return tuple(extras)


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes:
        raise LabError("--modes: give at least one of " + ", ".join(MODES))
    for mode in modes:
        if mode not in MODES:
            raise LabError(f"unknown mode {mode!r} in --modes; known: {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise LabError(f"--modes {text!r} names a mode twice")
    return modes


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise LabError(f"--seeds {text!r}: expected integers separated by commas") from None
    if not seeds or min(seeds) < 0:
        raise LabError(f"--seeds {text!r}: expected integers >= 0 separated by commas")
    if len(set(seeds)) != len(seeds):
        raise LabError(f"--seeds {text!r} names a seed twice")
    return seeds


def parse_grid_entry(text: str) -> GridEntry:
    """`NAME:--config.x=1,--config.y=2` (or `NAME` alone: no overrides). Commas split only before
    `--config.`, so a value like `(8,8)` keeps its comma."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name or not all(c.isalnum() or c in "_.-" for c in name) or name.startswith("."):
        raise LabError(f"--grid {text!r}: NAME must be letters, digits, '_', '-' or '.'")
    tokens = [t.strip() for t in re.split(r",\s*(?=--config\.)", rest)]
    overrides = tuple(check_override(t, f"--grid {name}") for t in tokens if t)
    return GridEntry(name, overrides)


def parse_grid(texts: Sequence[str] | None) -> tuple[GridEntry, ...] | None:
    if not texts:
        return None
    entries = tuple(parse_grid_entry(t) for t in texts)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise LabError(f"--grid names a grid entry twice: {', '.join(names)}")
    return entries


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="experiments/lab.py",
        description=__doc__.split("\n\n")[0],
        epilog="Overrides for every run go after '--': -- --config.rl.kl_beta=0.5",
    )
    parser.add_argument("--out", required=True, help="the lab directory")
    parser.add_argument(
        "--warm-start", help="a run dir with sft_model/, a model dir, or a pattern with {seed}"
    )
    parser.add_argument(
        "--warm-start-per-seed",
        metavar="PATTERN",
        help="a warm start per seed, e.g. 'runs/ws{seed}/sft_model'",
    )
    parser.add_argument("--env", default="sokoban")
    parser.add_argument("--modes", help="comma-separated (default turbo_kl,ppo)")
    parser.add_argument("--seeds", help="comma-separated (default 0,1,2)")
    parser.add_argument(
        "--grid",
        action="append",
        metavar="NAME:--config.x=1,--config.y=2",
        help="a named set of overrides (repeat; default: 'default', none)",
    )
    parser.add_argument("--updates", type=int, help="--config.train.updates of every run")
    parser.add_argument("--smoke", action="store_true", help="pass --smoke to every run")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="no training: tables and plot of the runs in --out",
    )
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line, checked: bad values raise LabError (one line), unknown flags exit 2."""
    own, extras = split_extras(argv)
    args = make_parser().parse_args(own)
    args.argv = list(argv)
    args.extras = check_extras(extras)
    args.grid = parse_grid(args.grid)
    args.modes = parse_modes(args.modes) if args.modes is not None else None
    args.seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if args.warm_start and args.warm_start_per_seed:
        raise LabError("give --warm-start or --warm-start-per-seed, not both")
    if args.warm_start_per_seed and "{seed}" not in args.warm_start_per_seed:
        raise LabError(f"--warm-start-per-seed {args.warm_start_per_seed!r} has no {{seed}}")
    if args.updates is not None and args.updates < 1:
        raise LabError(f"--updates {args.updates}: need >= 1")
    if args.resamples < 100:
        raise LabError(f"--resamples {args.resamples}: need >= 100")
    if not args.report_only:
        if not (args.warm_start or args.warm_start_per_seed):
            raise LabError("--warm-start (or --warm-start-per-seed) is needed to train")
        args.modes = args.modes or ("turbo_kl", "ppo")
        args.seeds = args.seeds if args.seeds is not None else (0, 1, 2)
        args.grid = args.grid or (GridEntry(DEFAULT_GRID),)
    return args


# -- warm starts ------------------------------------------------------------------------------


def _is_model_dir(path: Path) -> bool:
    """A Hugging Face directory as `gtr-turbo sft` writes it (a run dir has config.json too, but
    no safetensors: its weights are orbax checkpoints)."""
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def resolve_warm_start(pattern: str, seed: int) -> Path:
    """Seed `seed`'s warm-started model: the pattern with `{seed}` filled in, and a run directory
    taken to mean its `sft_model/`. Missing: one line that says how to make it."""
    path = Path(pattern.replace("{seed}", str(seed))).absolute()
    if (path / "sft_model").is_dir():
        path = path / "sft_model"
    if not _is_model_dir(path):
        run = path.parent if path.name == "sft_model" else path
        what = "not found" if not path.exists() else "is not a model directory (no *.safetensors)"
        raise LabError(
            f"warm start {path} (seed {seed}) {what}: make one with `gtr-turbo sft --seed={seed} "
            f"--workdir={run}` (it writes {run}/sft_model)"
        )
    return path


def warm_starts(pattern: str, seeds: Iterable[int]) -> dict[int, Path]:
    """Every seed's warm start, checked before any run starts (a typo fails in a second, not
    after the first seed's runs)."""
    return {seed: resolve_warm_start(pattern, seed) for seed in seeds}


# -- the runs ---------------------------------------------------------------------------------


def run_state(run_dir: Path) -> str:
    """'done' (summary.json written at the end of a run), 'resume' (checkpoints: what
    `gtr-turbo train` itself refuses to start afresh over) or 'fresh'."""
    if (run_dir / SUMMARY_FILE).is_file():
        return "done"
    checkpoints = run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        return "resume"
    return "fresh"


def fresh_argv(
    key: RunKey,
    run_dir: Path,
    *,
    env: str,
    warm_start: Path,
    updates: int | None,
    smoke: bool,
    extras: Sequence[str],
    overrides: Sequence[str],
) -> list[str]:
    """`gtr-turbo train` arguments of a new run (overrides in the module docstring's order)."""
    argv = [
        "train",
        f"--env={env}",
        f"--mode={key.mode}",
        f"--seed={key.seed}",
        f"--workdir={run_dir}",
        *(["--smoke"] if smoke else []),
        f"--config.model.path={warm_start}",
        "--config.warm_start.steps=0",
    ]
    if updates is not None:
        argv.append(f"--config.train.updates={updates}")
    return [*argv, *extras, *overrides]


def resume_argv(run_dir: Path) -> list[str]:
    """A killed run continues with its own config.json (gtr-turbo refuses overrides there)."""
    return ["train", f"--workdir={run_dir}", "--resume"]


# `python -c` code that runs `gtr-turbo` with a parent-death signal (Linux): the run gets SIGTERM
# when the lab dies, even by SIGKILL, so a rerun lab never trains in the same directory as an
# orphan of the killed one. Set in the child itself, not by `preexec_fn`, which is unsafe after
# fork in a threaded process (the lab has imported JAX to check the configs).
_WITH_PARENT = """import ctypes, os, runpy, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != {parent}:
    sys.exit(143)  # the lab died before the signal was set
runpy.run_module("gtr_turbo_jax", run_name="__main__", alter_sys=True)
"""


def launch_command(argv: Sequence[str]) -> list[str]:
    """The command line of one `gtr-turbo ARGV` process (`python -m gtr_turbo_jax ARGV`)."""
    if sys.platform.startswith("linux"):
        code = _WITH_PARENT.format(parent=os.getpid())
        return [sys.executable, "-c", code, *argv]
    return [sys.executable, "-m", "gtr_turbo_jax", *argv]


def launch(argv: Sequence[str]) -> int:
    """Runs `gtr-turbo ARGV` in a fresh Python process; its exit status. On Ctrl-C (which the run
    gets too: same process group) the run has a while to close its files before it is ended."""
    process = subprocess.Popen(launch_command(argv))
    try:
        return process.wait()
    except KeyboardInterrupt:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait()
        raise


def run_plan(
    grid: Sequence[GridEntry], modes: Sequence[str], seeds: Sequence[int]
) -> list[tuple[RunKey, GridEntry]]:
    """Every run, seeds outermost (see the module docstring)."""
    return [(RunKey(g.name, m, s), g) for s in seeds for g in grid for m in modes]


def run_all(
    out: Path,
    plan: Sequence[tuple[RunKey, GridEntry]],
    argv_of: Callable[[RunKey, GridEntry, Path], list[str]],
    echo: Callable[[str], None] = print,
) -> list[RunKey]:
    """Trains the runs of `plan` that are not done, one after another; the runs that failed.

    `argv_of(key, entry, run_dir)` gives a fresh run's arguments. A run that fails (non-zero
    status) is reported and the next one starts; Ctrl-C stops the lab (rerun to continue)."""
    failed = []
    for number, (key, entry) in enumerate(plan, start=1):
        run_dir = key.directory(out)
        state = run_state(run_dir)
        echo(f"[{number}/{len(plan)}] {key.label()}: {state}")
        if state == "done":
            continue
        argv = resume_argv(run_dir) if state == "resume" else argv_of(key, entry, run_dir)
        status = launch(argv)
        if status in (INTERRUPTED, -signal.SIGINT):
            raise Interrupted(f"{key.label()} stopped (status {status})")
        if status != 0:
            echo(f"{key.label()} failed with status {status}: going on with the next run")
            failed.append(key)
    return failed


def validate_overrides(
    env: str,
    grid: Sequence[GridEntry],
    modes: Sequence[str],
    extras: Sequence[str],
    smoke: bool,
    updates: int | None,
) -> None:
    """Builds each (grid entry, mode)'s config as `gtr-turbo train` will (`cli.build_config`), so a
    bad key or value fails now, not hours into the lab."""
    from gtr_turbo_jax import cli
    from gtr_turbo_jax.train.run_config import ConfigError

    spec = next((t.split("=", 1)[1] for t in extras if t.startswith("--config=")), None)
    base = ["--config.warm_start.steps=0"]
    if updates is not None:
        base.append(f"--config.train.updates={updates}")
    overrides_of_extras = [t for t in extras if t.startswith("--config.")]
    for entry in grid:
        for mode in modes:
            args = argparse.Namespace(config=spec, env=env, mode=mode, seed=0, smoke=smoke)
            try:
                cli.build_config(args, [*base, *overrides_of_extras, *entry.overrides])
            except ConfigError as err:
                raise LabError(f"grid {entry.name!r}, mode {mode}: {err}") from None


# -- the lab's record -------------------------------------------------------------------------


def git_commit() -> str:
    """`git rev-parse --short HEAD` of this checkout, '+dirty' with uncommitted tracked changes
    (the numbers then come from code no commit holds)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            text=True,
            capture_output=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(["python", "experiments/lab.py", *argv])


def settings(args: argparse.Namespace, pattern: str) -> dict[str, Any]:
    """What every run of one lab directory shares (compared by `merge_record`)."""
    return {
        "env": args.env,
        "warm_start": str(Path(pattern).absolute()),
        "updates": args.updates,
        "smoke": args.smoke,
        "extras": list(args.extras),
    }


def merge_record(
    record: dict[str, Any],
    lab_settings: dict[str, Any],
    grid: Sequence[GridEntry],
    invocation: dict[str, Any],
) -> dict[str, Any]:
    """`record` (DIR/lab.json, or {}) with this command's grid entries and invocation; LabError
    where it contradicts what the directory was started with."""
    old = record.get("settings")
    if old is not None and old != lab_settings:
        diff = ", ".join(
            f"{k}: {old.get(k)!r} -> {v!r}" for k, v in lab_settings.items() if old.get(k) != v
        )
        raise LabError(
            f"this lab directory was started with other settings ({diff}): use another --out"
        )
    grids = dict(record.get("grid", {}))
    for entry in grid:
        known = grids.get(entry.name)
        if known is not None and tuple(known) != entry.overrides:
            raise LabError(
                f"grid {entry.name!r} was run with {' '.join(known) or 'no overrides'}"
                f"; give these overrides another name"
            )
        grids[entry.name] = list(entry.overrides)
    invocations = [*record.get("invocations", []), invocation]
    return {"settings": lab_settings, "grid": grids, "invocations": invocations}


def read_record(out: Path) -> dict[str, Any]:
    path = out / LAB_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# -- reading runs -----------------------------------------------------------------------------


class RunResult(NamedTuple):
    """What the tables need from one finished run directory (NamedTuples, not dataclasses: the
    tests load this script without registering it in sys.modules, which dataclasses need)."""

    key: RunKey
    initial: dict[str, float]  # held-out eval at update 0: the warm start
    final: dict[str, float]  # the last eval: the trained model
    thought_entropy: float  # mean over the run's update lines
    kl_mean: float
    eval_episodes: int | None  # held-out levels per evaluation (config.json)
    outcomes: tuple[np.ndarray, np.ndarray] | None  # per-level success: warm, trained

    def success(self, which: str) -> float:
        return _number((self.initial if which == "warm" else self.final).get("eval/success_rate"))

    @property
    def gain(self) -> float:
        return self.success("trained") - self.success("warm")


def _number(value: Any) -> float:
    """A table cell's value: a finite float, or NaN for missing / null / non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value) if math.isfinite(value) else math.nan


def run_mean(lines: Sequence[dict[str, Any]], key: str) -> float:
    """Mean of `key` over the update lines (step >= 1) where it is finite: the run's average
    (the step-0 line is the warm start's evaluation, not an update)."""
    values = [_number(line.get(key)) for line in lines if line.get("step", 0) >= 1]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def episode_outcomes(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-level success of the warm start (step 0) and the trained model (the last step) from
    `EPISODES_FILE`; None where the run has none (runs of trainers before it was written)."""
    path = run_dir / EPISODES_FILE
    if not path.is_file():
        return None
    evals = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            evals[int(record["step"])] = np.asarray(record["success"], dtype=float)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
    if 0 not in evals or len(evals) < 2:
        return None
    warm, trained = evals[0], evals[max(evals)]
    return (warm, trained) if warm.shape == trained.shape and warm.ndim == 1 else None


def load_run(key: RunKey, run_dir: Path) -> RunResult | None:
    """The finished run in `run_dir`, or None (not finished: no summary.json)."""
    from gtr_turbo_jax.train.logger import read_metrics

    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    try:
        lines = read_metrics(run_dir)
    except FileNotFoundError:
        lines = []
    episodes = None
    if (run_dir / CONFIG_FILE).is_file():
        train = json.loads((run_dir / CONFIG_FILE).read_text()).get("train", {})
        episodes = train.get("eval_episodes")
    return RunResult(
        key=key,
        initial=summary.get("initial", {}),
        final=summary.get("final", {}),
        thought_entropy=run_mean(lines, "thought_entropy"),
        kl_mean=run_mean(lines, "kl_mean"),
        eval_episodes=episodes,
        outcomes=episode_outcomes(run_dir),
    )


def discover(out: Path) -> list[RunKey]:
    """Every run directory under `out` (DIR/<grid>/<mode>/seed<k>/), finished or not."""
    keys = []
    for path in out.glob("*/*/seed*"):
        seed = path.name[len("seed") :]
        if path.is_dir() and seed.isdigit() and path.parent.name in MODES:
            keys.append(RunKey(path.parent.parent.name, path.parent.name, int(seed)))
    return keys


def report_keys(
    out: Path,
    grids: Sequence[str] | None,
    modes: Sequence[str] | None,
    seeds: Sequence[int] | None,
    grid_order: Sequence[str] = (),
) -> list[RunKey]:
    """The runs a report covers: the product of the given grid names, modes and seeds, each
    dimension not given being every value found under `out` (grids in `grid_order` first)."""
    found = discover(out)
    if grids is None:
        names = {k.grid for k in found}
        grids = [g for g in grid_order if g in names] + sorted(names - set(grid_order))
    if modes is None:
        modes = [m for m in MODES if m in {k.mode for k in found}]
    if seeds is None:
        seeds = sorted({k.seed for k in found})
    return [RunKey(g, m, s) for g in grids for m in modes for s in seeds]


# -- statistics -------------------------------------------------------------------------------


def mean_se(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, standard error (sample std with ddof=1 over sqrt(n); NaN for one value) and n of
    the finite values: the seeds' spread, which is what says whether a difference is real."""
    finite = np.array([v for v in values if not math.isnan(v)], dtype=float)
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    se = float(np.std(finite, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(np.mean(finite)), se, n


def paired_bootstrap(
    warm: np.ndarray,
    trained: np.ndarray,
    rng: np.random.Generator,
    resamples: int = 10_000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of the mean per-level difference trained - warm, resampling levels
    with replacement: the same level in both evaluations is one draw, so level difficulty (shared
    by both) drops out of the interval."""
    diff = np.asarray(trained, float) - np.asarray(warm, float)
    index = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[index].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def normal_interval(
    p_warm: float,
    p_trained: float,
    n: int | None,
    level: float = 0.95,
) -> tuple[float, float]:
    """Normal-approximation interval of the difference of two binomial proportions over n levels
    each, as if independent: without per-level outcomes the pairing is unknown. Levels shared by
    both evaluations correlate positively, so this is wider than the paired interval."""
    if not n or math.isnan(p_warm) or math.isnan(p_trained):
        return math.nan, math.nan
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    se = math.sqrt((p_warm * (1 - p_warm) + p_trained * (1 - p_trained)) / n)
    gain = p_trained - p_warm
    return gain - z * se, gain + z * se


def gain_interval(
    run: RunResult,
    rng: np.random.Generator,
    resamples: int = 10_000,
) -> tuple[float, float, str]:
    """The 95% interval of one seed's gain and how it was made: 'bootstrap' (paired, per-level
    outcomes) or 'normal' (binomial normal approximation from the two success rates)."""
    if run.outcomes is not None:
        return (*paired_bootstrap(*run.outcomes, rng, resamples), "bootstrap")
    return (
        *normal_interval(run.success("warm"), run.success("trained"), run.eval_episodes),
        "normal",
    )


# -- tables -----------------------------------------------------------------------------------

# (header, value of one run): each column of the summary table is mean +- s.e. over seeds.
COLUMNS: tuple[tuple[str, Callable[[RunResult], float]], ...] = (
    ("warm-start success", lambda r: r.success("warm")),
    ("trained success", lambda r: r.success("trained")),
    ("gain", lambda r: r.gain),
    ("return", lambda r: _number(r.final.get("eval/return_mean"))),
    ("valid replies", lambda r: _number(r.final.get("eval/valid_rate"))),
    ("no-effect rate", lambda r: _number(r.final.get("eval/no_effect_rate"))),
    ("thought entropy", lambda r: r.thought_entropy),
    ("KL", lambda r: r.kl_mean),
    ("self-BLEU", lambda r: _number(r.final.get("eval/self_bleu"))),
    ("grounding", lambda r: _number(r.final.get("eval/grounding"))),
)


def group(runs: Sequence[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    """Runs by (grid, mode), in the order they come."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.key.grid, run.key.mode), []).append(run)
    return groups


def summary_stats(runs: Sequence[RunResult]) -> dict[tuple[str, str], dict[str, tuple]]:
    """{(grid, mode): {column: (mean, s.e., n)}} over each group's seeds."""
    return {
        row: {name: mean_se(value(r) for r in group_runs) for name, value in COLUMNS}
        for row, group_runs in group(runs).items()
    }


def fmt(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_mean_se(mean: float, se: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{fmt(mean)} ± {fmt(se)}" if not math.isnan(se) else f"{fmt(mean)} ± n/a"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def summary_table(runs: Sequence[RunResult]) -> str:
    headers = ["grid", "mode", "seeds", *(name for name, _ in COLUMNS)]
    rows = []
    for (grid, mode), stats in summary_stats(runs).items():
        seeds = str(len(group(runs)[grid, mode]))
        rows.append([grid, mode, seeds, *(fmt_mean_se(m, s) for m, s, _ in stats.values())])
    return markdown_table(headers, rows)


def seed_table(runs: Sequence[RunResult], rng: np.random.Generator, resamples: int) -> str:
    headers = [
        "grid",
        "mode",
        "seed",
        "warm start",
        "trained",
        "gain",
        "95% interval of gain",
        "interval",
        "levels",
    ]
    rows = []
    for run in runs:
        low, high, method = gain_interval(run, rng, resamples)
        levels = len(run.outcomes[0]) if run.outcomes is not None else run.eval_episodes
        interval = "-" if math.isnan(low) else f"[{fmt(low)}, {fmt(high)}]"
        rows.append(
            [
                run.key.grid,
                run.key.mode,
                str(run.key.seed),
                fmt(run.success("warm")),
                fmt(run.success("trained")),
                fmt(run.gain),
                interval,
                method,
                str(levels or "-"),
            ]
        )
    return markdown_table(headers, rows)


TABLE_NOTES = (
    "Held-out evaluation (`eval/...`, greedy unless the config says otherwise). Mean ± standard "
    "error over seeds (sample std / sqrt(seeds); n/a with one seed). Warm start: the evaluation "
    "at update 0 of each run, on the same held-out levels as the trained model's, so the gain is "
    "paired per seed. Return, valid replies, no-effect rate, self-BLEU and grounding: the trained "
    "model. Thought entropy and KL: the per-update metrics `thought_entropy` and `kl_mean`, "
    "averaged over each run's updates."
)
INTERVAL_NOTES = (
    "Interval of one seed's gain: `bootstrap` is a paired bootstrap over the held-out levels "
    f"(per-level outcomes from the run's `{EPISODES_FILE}`); `normal` is the binomial normal "
    "approximation p_t - p_w ± 1.96 sqrt((p_w(1-p_w) + p_t(1-p_t)) / levels), which treats the "
    "two evaluations as independent (the trainer writes no per-level outcomes) and is therefore "
    "wider than the paired interval."
)


def report_markdown(
    out: Path,
    tables: Sequence[str],
    missing: Sequence[RunKey],
    record: dict[str, Any],
    this_command: str,
) -> str:
    """DIR/results.md: the commands and commits that made the runs, the grid, the summary and
    per-seed `tables`."""
    commands = [
        f"{i['command']}   # {i['commit']}, {i['time']}" for i in record.get("invocations", [])
    ]
    parts = [
        f"# Learning lab: {out}",
        "",
        f"Report: `{this_command}` at commit {git_commit()}.",
        "",
    ]
    if commands:
        parts += ["Training commands (# commit, time):", "", "```bash", *commands, "```", ""]
    if record.get("settings"):
        parts += [f"Settings of every run: `{json.dumps(record['settings'])}`", ""]
    if record.get("grid"):
        rows = [
            [name, " ".join(f"`{o}`" for o in overrides) or "-"]
            for name, overrides in record["grid"].items()
        ]
        parts += ["## Grid", "", markdown_table(["grid", "overrides"], rows), ""]
    summary, per_seed = tables
    parts += ["## Summary", "", summary, "", TABLE_NOTES, ""]
    parts += ["## Per seed", "", per_seed, "", INTERVAL_NOTES, ""]
    if missing:
        parts += ["## Not finished", "", ", ".join(k.label() for k in missing), ""]
    return "\n".join(parts)


def plot(runs: Sequence[RunResult], path: Path) -> Path:
    """Bars of held-out success, warm start vs trained, per (grid, mode), s.e. error bars, each
    seed a dot: the lab's result at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group(runs)
    one_grid = len({grid for grid, _ in groups}) == 1
    labels = [mode if one_grid else f"{grid}\n{mode}" for grid, mode in groups]
    x = np.arange(len(groups))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(groups) + 1.5), 4.0))
    for shift, which, name in (
        (-width / 2, "warm", "warm start"),
        (width / 2, "trained", "trained"),
    ):
        stats = [mean_se(r.success(which) for r in g) for g in groups.values()]
        means = [m for m, _, _ in stats]
        errors = [0.0 if math.isnan(s) else s for _, s, _ in stats]
        ax.bar(x + shift, means, width, yerr=errors, capsize=4, label=name, alpha=0.8)
        for i, g in enumerate(groups.values()):
            dots = [r.success(which) for r in g]
            ax.plot([x[i] + shift] * len(dots), dots, "k.", markersize=5)
    ax.set_xticks(x, labels)
    ax.set_ylabel("held-out success rate")
    values = [r.success(w) for r in runs for w in ("warm", "trained")]
    ax.set_ylim(0, 1.15 * max([0.05, *(v for v in values if not math.isnan(v))]))
    ax.set_title("warm start vs trained (mean ± s.e. over seeds; dots: seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(args: argparse.Namespace, out: Path, echo: Callable[[str], None] = print) -> str:
    """Reads the runs, writes results.md and results.png, prints the tables; the Markdown."""
    record = read_record(out)
    names = [g.name for g in args.grid] if args.grid else None
    keys = report_keys(out, names, args.modes, args.seeds, list(record.get("grid", {})))
    loaded = [(key, load_run(key, key.directory(out))) for key in keys]
    runs = [run for _, run in loaded if run is not None]
    missing = [key for key, run in loaded if run is None]
    rng = np.random.default_rng(args.bootstrap_seed)
    tables = (summary_table(runs), seed_table(runs, rng, args.resamples))
    text = report_markdown(out, tables, missing, record, command_line(args.argv))
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.md"]
    written[0].write_text(text)
    if runs:
        written.append(plot(runs, out / "results.png"))
    echo(f"{tables[0]}\n\n{tables[1]}")
    if missing:
        echo(f"not finished: {', '.join(k.label() for k in missing)}")
    echo("written: " + ", ".join(str(p) for p in written))
    return text


# -- main -------------------------------------------------------------------------------------


def train_lab(args: argparse.Namespace, out: Path, echo: Callable[[str], None] = print) -> int:
    """Checks everything, records the lab, trains what is not done; the failed runs' count."""
    pattern = args.warm_start_per_seed or args.warm_start
    starts = warm_starts(pattern, args.seeds)
    validate_overrides(args.env, args.grid, args.modes, args.extras, args.smoke, args.updates)
    invocation = {
        "command": command_line(args.argv),
        "commit": git_commit(),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    record = merge_record(read_record(out), settings(args, pattern), args.grid, invocation)
    out.mkdir(parents=True, exist_ok=True)
    (out / LAB_FILE).write_text(json.dumps(record, indent=2) + "\n")

    def argv_of(key: RunKey, entry: GridEntry, run_dir: Path) -> list[str]:
        return fresh_argv(
            key,
            run_dir,
            env=args.env,
            warm_start=starts[key.seed],
            updates=args.updates,
            smoke=args.smoke,
            extras=args.extras,
            overrides=entry.overrides,
        )

    failed = run_all(out, run_plan(args.grid, args.modes, args.seeds), argv_of, echo)
    if failed:
        echo(f"failed runs: {', '.join(k.label() for k in failed)} (rerun the lab to retry)")
    return len(failed)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        out = Path(args.out)
        if args.report_only and not out.is_dir():
            raise LabError(f"--out {out} is not a directory: nothing to report")
        failed = 0 if args.report_only else train_lab(args, out)
        report(args, out)
    except LabError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as err:
        print(
            f"{PROG}: interrupted ({err or 'Ctrl-C'}); rerun the same command to continue",
            file=sys.stderr,
        )
        return INTERRUPTED
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
