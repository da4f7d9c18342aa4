"""Whole-loop benchmark: env steps per second of rollout + update for each mode, side by side.

    python experiments/bench/train.py [--quick] [--repeats 3] [--updates 6] [--modes ppo,turbo_kl]

Each repeat trains every mode (`ppo`, `turbo_kl`, `turbo_sft`, `gtr`; `--modes`: a subset, `ppo`
always included) for `--updates` updates on the tiny Sokoban default (`configs/sokoban.py`;
`--quick`: the `micro` model and the smoke sizes), in turn, from the same seed and without the warm
start. The first update of each run (compilation) and the last (the final evaluation) are
excluded: the rate is env steps over the wall time of the updates in between, from each run's
`metrics.jsonl`. Medians over repeats; where the time goes (rollout, teacher, update, eval,
logging, checkpoint) is the median share of the timed phases.
Issue #6's bound: `turbo_kl_over_ppo_per_env_step <= 1.15` (the time per env step, kl over ppo).
The last line is one JSON object: {"bench": "train", "turbo_kl_over_ppo_per_env_step": ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from gtr_turbo_jax.train.logger import read_metrics
from gtr_turbo_jax.train.run_config import load_config, smoke
from gtr_turbo_jax.train.trainer import Trainer

MODES = ("ppo", "turbo_kl", "turbo_sft", "gtr")
PHASES = ("rollout", "teacher", "update", "eval", "logging", "checkpoint")


def config_for(mode: str, quick: bool, updates: int):
    config = load_config("sokoban", [f"--config.rl.mode={mode}"])
    if quick:
        config = smoke(config)
    config.warm_start.steps = 0
    config.train.updates = updates
    config.train.eval_every = updates
    config.train.eval_episodes = 4
    config.train.record_episodes = 0
    config.train.checkpoint_every = 2
    config.train.tensorboard = False
    return config


def run_once(mode: str, quick: bool, updates: int, root: Path) -> dict[str, float]:
    workdir = root / f"{mode}-{len(list(root.iterdir()))}"
    Trainer(config_for(mode, quick, updates), workdir, echo=lambda _: None).run()
    lines = [line for line in read_metrics(workdir) if line.get("step", 0) >= 1]
    timed = lines[1:-1]  # not the compiling first update, not the evaluating last one
    seconds = lines[-2]["wall_s"] - lines[0]["wall_s"]
    steps = lines[-2]["env_steps"] - lines[0]["env_steps"]
    phases = {p: sum(line.get(f"time/{p}", 0.0) for line in timed) for p in PHASES}
    return {"steps_per_s": steps / seconds, **phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of modes")
    args = parser.parse_args()
    asked = set(args.modes.split(","))
    if asked - set(MODES):
        parser.error(f"--modes: unknown {sorted(asked - set(MODES))}; valid: {', '.join(MODES)}")
    modes = [mode for mode in MODES if mode == "ppo" or mode in asked]  # the ratios need ppo
    if args.updates < 4:
        parser.error("--updates must be at least 4 (the first and last are not timed)")
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for mode in modes:
                runs[mode].append(run_once(mode, args.quick, args.updates, Path(tmp)))
                rate = runs[mode][-1]["steps_per_s"]
                print(f"repeat {repeat} {mode:>10}: {rate:8.1f} env steps/s", flush=True)
    result: dict[str, object] = {"bench": "train", "quick": args.quick}
    for mode in modes:
        rates = [r["steps_per_s"] for r in runs[mode]]
        result[f"{mode}_env_steps_per_s"] = round(statistics.median(rates), 2)
        shares = {}
        for phase in PHASES:
            values = [r[phase] / sum(r[p] for p in PHASES) for r in runs[mode]]
            shares[phase] = round(100 * statistics.median(values), 1)
        result[f"{mode}_time_percent"] = shares
        print(f"{mode:>10}: {result[f'{mode}_env_steps_per_s']} env steps/s; time % {shares}")
    for mode in modes[1:]:
        ratio = result["ppo_env_steps_per_s"] / result[f"{mode}_env_steps_per_s"]
        result[f"{mode}_over_ppo_per_env_step"] = round(ratio, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
