"""Whole-loop benchmark: env steps per second of rollout + update, side by side.

    python experiments/bench/train.py [--quick] [--repeats 3] [--updates 6] [--modes ppo,turbo_kl]

Each repeat trains, in turn and from the same seed without the warm start, every mode (`ppo`,
`turbo_kl`, `turbo_sft`, `gtr`; `--modes`: a subset, `ppo` always included) of the tiny Sokoban
default (`configs/sokoban.py`; `--quick`: the `micro` model and the smoke sizes), and the default
mode `turbo_kl` under `BASELINE` (the settings before the update stopped re-scoring the batch, the
prompt became the compact state and the teacher's SMA running sums, with GAE on 16 envs x 8 turns:
`--config` overrides, so the same code runs both) for
`--updates` updates. The first update of each run (compilation) and the last (the final
evaluation) are excluded: the rate is env steps over the wall time of the updates in between,
from each run's `metrics.jsonl`. Medians over repeats; where the time goes (rollout, teacher,
update, eval, logging, checkpoint) is the median share of the timed phases.

Reported ratios: `turbo_kl_over_ppo_per_env_step` (issue #18's bound: <= 1.15, the teacher stays
nearly free; the ratio of the medians) and `turbo_kl_over_ppo_paired` (the median over repeats
of the ratio within a repeat, where both modes ran minutes apart: robust to the machine's drift
between repeats), `speedup_over_baseline` (the default's env steps/s over the baseline's, turbo_kl;
the issue asks >= 4), and `update_flops_fraction`: the update's achieved FLOP/s (XLA's count of
one micro-batch forward, times the forwards and backwards the update runs, over its median wall
time) as a fraction of a float32 matmul's FLOP/s measured in the same run: how close the update
runs to what this machine's cores can do.
The last line is one JSON object: {"bench": "train", "turbo_kl_over_ppo_per_env_step": ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from gtr_turbo_jax.train.learner import Learner
from gtr_turbo_jax.train.logger import read_metrics
from gtr_turbo_jax.train.run_config import load_config, smoke
from gtr_turbo_jax.train.scoring import score_replies
from gtr_turbo_jax.train.trainer import Trainer

MODES = ("ppo", "turbo_kl", "turbo_sft", "gtr")
PHASES = ("rollout", "teacher", "update", "eval", "logging", "checkpoint")
# The tiny default before session 10: the brief prompt, the update re-scoring every reply, the
# teacher re-merged from a ring of 8 snapshots, sampling at 0.2.
BASELINE = (
    "--config.train.num_envs=16",
    "--config.rl.advantage=gae",
    "--config.train.turns_per_update=8",
    "--config.prompt.style=brief",
    "--config.rl.rescore=True",
    "--config.rl.merge_window=ring",
    "--config.sampling.temperature=0.2",
    "--config.rl.temperature=0.2",
)


def config_for(mode: str, quick: bool, updates: int, overrides: tuple[str, ...] = ()):
    config = load_config("sokoban", [f"--config.rl.mode={mode}", *overrides])
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


def run_once(config, root: Path) -> tuple[dict[str, float], Trainer]:
    workdir = root / f"run-{len(list(root.iterdir()))}"
    trainer = Trainer(config, workdir, echo=lambda _: None)
    trainer.run()
    lines = [line for line in read_metrics(workdir) if line.get("step", 0) >= 1]
    timed = lines[1:-1]  # not the compiling first update, not the evaluating last one
    seconds = lines[-2]["wall_s"] - lines[0]["wall_s"]
    steps = lines[-2]["env_steps"] - lines[0]["env_steps"]
    phases = {p: sum(line.get(f"time/{p}", 0.0) for line in timed) for p in PHASES}
    update_s = statistics.median(line["time/update"] for line in timed)
    return {"steps_per_s": steps / seconds, "update_s": update_s, **phases}, trainer


def forward_flops(learner: Learner) -> float:
    """XLA's FLOP count of one forward of a micro-batch over prompt + reply."""
    update = learner.setup.update
    like = learner.batch_like()
    state = learner.init_state()
    rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[: update.minibatch_size], like)
    forward = jax.jit(score_replies, static_argnames=("graphdef", "image_grid_thw"))
    args = (rows.prompt_ids, rows.prompt_mask, rows.image_patches, rows.response_ids)
    compiled = forward.lower(
        learner.defs.model, state.base, state.policy, *args, rows.response_mask,
        like.image_grid_thw,
    ).compile()  # fmt: skip
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis["flops"])


def update_flops(learner: Learner) -> float:
    """The update's FLOPs: forwards (re-scoring, the teacher's) + forward and backward (~3
    forwards) per sample and epoch, plus the SFT rows' forward and backward."""
    update, samples = learner.setup.update, learner.config.train.num_envs
    samples *= learner.config.train.turns_per_update
    passes = 3 * update.ppo_epochs + update.rescore + (update.mode == "turbo_kl")
    if update.uses_sft:
        passes += 3 * update.ppo_epochs * update.sft_rows / update.minibatch_size
    return forward_flops(learner) / update.minibatch_size * samples * passes


def matmul_flops_per_s(size: int = 1024, repeats: int = 10) -> float:
    """A float32 `[size, size] @ [size, size]` matmul's FLOP/s on this machine (median)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


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
    if args.updates < 4:
        parser.error("--updates must be at least 4 (the first and last are not timed)")
    modes = [mode for mode in MODES if mode in ("ppo", "turbo_kl") or mode in asked]
    variants = {mode: (mode, ()) for mode in modes}
    variants["baseline_turbo_kl"] = ("turbo_kl", BASELINE)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    trainers: dict[str, Trainer] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, (mode, overrides) in variants.items():
                config = config_for(mode, args.quick, args.updates, overrides)
                result, trainers[name] = run_once(config, Path(tmp))
                runs[name].append(result)
                print(f"repeat {repeat} {name:>17}: {result['steps_per_s']:8.1f} env steps/s")
    result: dict[str, object] = {"bench": "train", "quick": args.quick}
    for name in variants:
        rates = [r["steps_per_s"] for r in runs[name]]
        result[f"{name}_env_steps_per_s"] = round(statistics.median(rates), 2)
        shares = {}
        for phase in PHASES:
            values = [r[phase] / sum(r[p] for p in PHASES) for r in runs[name]]
            shares[phase] = round(100 * statistics.median(values), 1)
        result[f"{name}_time_percent"] = shares
        print(f"{name:>17}: {result[f'{name}_env_steps_per_s']} env steps/s; time % {shares}")
    for mode in modes[1:]:
        ratio = result["ppo_env_steps_per_s"] / result[f"{mode}_env_steps_per_s"]
        result[f"{mode}_over_ppo_per_env_step"] = round(ratio, 3)
        paired = [p["steps_per_s"] / m["steps_per_s"] for p, m in zip(runs["ppo"], runs[mode])]
        result[f"{mode}_over_ppo_paired"] = round(statistics.median(paired), 3)
    speedup = result["turbo_kl_env_steps_per_s"] / result["baseline_turbo_kl_env_steps_per_s"]
    result["speedup_over_baseline"] = round(speedup, 2)
    for name in ("turbo_kl", "baseline_turbo_kl"):
        seconds = statistics.median(r["update_s"] for r in runs[name])
        result[f"{name}_update_flops_per_s"] = update_flops(trainers[name].learner) / seconds
    peak = matmul_flops_per_s()
    result["matmul_flops_per_s"] = peak
    result["update_flops_fraction"] = round(result["turbo_kl_update_flops_per_s"] / peak, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
