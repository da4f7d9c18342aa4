"""`gtr-turbo train | sft | eval | plot | export | bench` (also `python -m gtr_turbo_jax ...`).

    gtr-turbo train --env=sokoban                              # the tiny CPU default
    gtr-turbo train --config=configs/points24.py:qwen2.5-vl-3b --config.model.path=DIR
    gtr-turbo train --env=sokoban --config.rl.mode=ppo --config.train.updates=10 --workdir=runs/a
    gtr-turbo train --env=my_pkg.corridor:Corridor             # an env class of your own package
    gtr-turbo train --workdir=runs/a --resume                  # continue where it stopped
    gtr-turbo eval runs/a --episodes=100 --gifs=4
    gtr-turbo plot runs/a runs/b                               # PNGs in runs/a/plots
    gtr-turbo export runs/a out/hf_model                       # HF directory, LoRA merged
    gtr-turbo bench update --quick

A user mistake (bad config key or value, missing directory, unusable checkpoint) prints one line
`gtr-turbo: error: ...` and exits with status 2; finished work (checkpoints, metrics) is never
touched by a failed command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "gtr-turbo"


class UsageError(ValueError):
    """A bad command line; `str()` is the one line printed."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from gtr_turbo_jax.train.checkpoint import CheckpointError
    from gtr_turbo_jax.train.run_config import ConfigError
    from gtr_turbo_jax.train.trainer import TrainingError

    return (UsageError, ConfigError, CheckpointError, TrainingError, FileNotFoundError,
            FileExistsError, NotADirectoryError)  # fmt: skip


# -- configs ----------------------------------------------------------------------------------


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`--config.a.b=v` / `--config.a.b v` tokens apart from the rest."""
    rest, overrides = [], []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--config."):
            if "=" not in token:
                if i + 1 >= len(tokens):
                    raise UsageError(f"{token} needs a value: {token}=VALUE")
                token = f"{token}={tokens[i + 1]}"
                i += 1
            overrides.append(token)
        else:
            rest.append(token)
        i += 1
    return rest, overrides


def run_config(run_dir: str | Path):
    """`train.run_config.read_run_config`: the resolved config a run directory was trained with."""
    from gtr_turbo_jax.train.run_config import read_run_config

    return read_run_config(run_dir)


def build_config(args: argparse.Namespace, overrides: list[str]):
    from gtr_turbo_jax.envs import DEFAULT_ENV
    from gtr_turbo_jax.train.run_config import apply_override, load_config, smoke, validate

    spec = args.config or args.env or DEFAULT_ENV
    config = load_config(spec, overrides)
    if args.mode:
        apply_override(config, f"rl.mode={args.mode}")
    if args.seed is not None:
        apply_override(config, f"train.seed={args.seed}")
    if args.smoke:
        config = smoke(config)
        for override in overrides:  # explicit overrides win over the smoke sizes
            apply_override(config, override)
    validate(config)
    return config


def _default_workdir(config) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    env = config.env.name.replace(":", ".")  # an env class of the user's: module:Class
    return Path("runs") / f"{env}-{config.rl.mode}-{stamp}"


# -- commands ---------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from gtr_turbo_jax.train.trainer import Trainer

    workdir = Path(args.workdir) if args.workdir else None
    if args.resume:
        if workdir is None:
            raise UsageError("--resume needs --workdir=RUN_DIR (the run to continue)")
        config = run_config(workdir)
        if overrides or args.smoke or args.mode or args.seed is not None:
            raise UsageError(
                "--resume continues a run with its own config.json: drop the overrides"
            )
    else:
        config = build_config(args, overrides)
        workdir = workdir or _default_workdir(config)
        if (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
            raise UsageError(
                f"{workdir} already holds checkpoints: pass --resume to continue it, or choose "
                "another --workdir"
            )
    summary = Trainer(config, workdir, resume=args.resume, echo=_echo).run()
    print(summary_table(summary))
    return 0


def cmd_sft(args: argparse.Namespace, overrides: list[str]) -> int:
    """The supervised warm start alone, evaluated; the model is written as an HF directory."""
    from gtr_turbo_jax.train.commands import warm_start_run

    config = build_config(args, overrides)
    workdir = Path(args.workdir) if args.workdir else _default_workdir(config)
    workdir.mkdir(parents=True, exist_ok=True)
    warm, out = warm_start_run(config, workdir)
    print(json.dumps(warm, indent=2))
    print(f"warm-started model written to {out}")
    return 0


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from gtr_turbo_jax.train.commands import evaluate_run

    if overrides:
        raise UsageError("eval reads the run's config.json; it takes no --config overrides")
    try:
        metrics = evaluate_run(
            args.run_dir, episodes=args.episodes, gifs=args.gifs, step=args.step,
            temperature=args.temperature,
        )  # fmt: skip
    except ValueError as err:  # a bad --episodes / --temperature / --gifs
        raise UsageError(str(err)) from None
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_plot(args: argparse.Namespace, overrides: list[str]) -> int:
    from gtr_turbo_jax.plot import plot_runs

    if overrides:
        raise UsageError("plot takes run directories, not --config overrides")
    try:
        paths = plot_runs(args.run_dirs, args.out, x=args.x, smoothing=args.smoothing)
    except ValueError as err:
        raise UsageError(str(err)) from None
    for path in paths:
        print(path)
    return 0


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    from gtr_turbo_jax.train.commands import export_run

    if overrides:
        raise UsageError("export reads the run's config.json; it takes no --config overrides")
    out = export_run(args.run_dir, args.out_dir, step=args.step)
    print(f"exported to {out}")
    return 0


BENCHES = ("envs", "model", "rollout", "update", "train", "memory")


def cmd_bench(args: argparse.Namespace, overrides: list[str]) -> int:
    script = Path(__file__).resolve().parents[1] / "experiments" / "bench" / f"{args.name}.py"
    if not script.is_file():
        raise UsageError(f"benchmark script {script} not found (a source checkout has them)")
    command = [sys.executable, str(script), *(["--quick"] if args.quick else []), *overrides]
    return subprocess.call(command)


def summary_table(summary: dict[str, Any]) -> str:
    """The end-of-run table: held-out metrics of the starting (warm-started) and trained model."""
    keys = ("success_rate", "return_mean", "valid_rate", "episode_length", "thought_len",
            "self_bleu", "grounding", "no_effect_rate")  # fmt: skip
    initial, final = summary.get("initial", {}), summary.get("final", {})
    rows = [f"{'held-out':<16}{'warm start':>12}{'trained':>12}"]
    for key in keys:
        a, b = initial.get(f"eval/{key}"), final.get(f"eval/{key}")
        if a is None and b is None:
            continue
        cell = lambda x: f"{x:>12.3f}" if isinstance(x, (int, float)) else f"{'-':>12}"
        rows.append(f"{key:<16}{cell(a)}{cell(b)}")
    head = (
        f"{summary['env']} / {summary['mode']}: {summary['updates']} updates, "
        f"{summary['env_steps']} env steps, {summary['wall_s'] / 60:.1f} min"
    )
    return "\n".join([head, *rows])


def _echo(line: str) -> None:
    print(line, file=sys.stderr)


# -- parser -----------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="GTR-Turbo in JAX: RL for VLM agents with a merged-checkpoint teacher.",
        epilog="Config overrides: --config.SECTION.KEY=VALUE (e.g. --config.rl.kl_beta=0.5).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--env", help="env name: picks configs/ENV.py (default: envs.DEFAULT_ENV); "
                       "or module:Class, an env class of your own package")  # fmt: skip
        p.add_argument("--config", help="a config file, configs/x.py[:model_size]")
        p.add_argument("--mode", choices=("ppo", "gtr", "turbo_sft", "turbo_kl"),
                       help="shortcut for --config.rl.mode")  # fmt: skip
        p.add_argument("--seed", type=int, help="shortcut for --config.train.seed")
        p.add_argument("--smoke", action="store_true", help="the smallest sizes (CI, < 2 min)")
        p.add_argument("--workdir", help="run directory (default runs/<env>-<mode>-<time>)")

    p = sub.add_parser("train", help="warm start, then RL (the main job)")
    with_config(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sft", help="only the supervised warm start on solver demonstrations")
    with_config(p)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on held-out levels")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=None, help="default: the run's eval_episodes")
    p.add_argument("--gifs", type=int, default=0, help="save this many episode animations")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: the run's eval_temperature; 0: greedy)")  # fmt: skip
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="PNG curves of one or more runs, overlaid")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default=None, help="default: the first run's plots/")
    p.add_argument("--x", default="env_steps", help="the x axis: env_steps, step or wall_s")
    p.add_argument("--smoothing", type=float, default=0.0, help="EMA weight in [0, 1)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("export", help="write the trained policy as a Hugging Face directory")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="run a benchmark from experiments/bench/")
    p.add_argument("name", choices=BENCHES)
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=cmd_bench)
    return parser


def _quiet_libraries() -> None:
    """Orbax / absl log warnings on every save; the CLI prints its own one-line reports."""
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    parser = make_parser()
    try:
        rest, overrides = _split_overrides(argv)
    except UsageError as err:
        parser.exit(2, f"{PROG}: error: {err}\n")
    args = parser.parse_args(rest)
    try:
        return args.func(args, overrides)
    except _user_errors() as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
