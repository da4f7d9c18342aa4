"""Environment throughput: steps per second under `jit(vmap(step))`, ours beside Jumanji's Sokoban.

    python experiments/bench/envs.py [--quick] [--batch 4096] [--render-batch 1024]

Every env that `gtr_turbo_jax.envs.make(name)` can build is measured with and without its image
(an env whose constructor has no `render_image` switch is measured "without" by leaving the image
out of what the loop keeps, so XLA drops the rendering). Each measurement is one jitted
`lax.scan` of `--steps` batched steps that carries the state and the observation (so the
observation is really computed), with per-env keys split inside the loop as a training loop
would. Compile time (first call minus a warm run) is reported apart.

The peer is Jumanji's `Sokoban-v0` (10x10, 4 boxes, its offline `ToyGenerator`: the default
generator downloads from the HF hub), stepped in the same process, alternating with our 10x10/4
Sokoban without images in every repeat (its observation is a grid, not an image). Its plain
`step` has no automatic reset while ours does; Jumanji under its `AutoResetWrapper` is measured
too. `sokoban_vs_jumanji` is the median over repeats of (our steps/s) / (Jumanji's steps/s).
The last line printed is one JSON object with all the figures.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gtr_turbo_jax.envs import env_class, make

# (label, env name for `envs.make`, overrides). Other envs slot in here.
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("sokoban_6x6_1", "sokoban", {}),
    ("sokoban_8x8_2", "sokoban", {"size": (8, 8), "num_boxes": 2}),
    ("sokoban_10x10_4", "sokoban", {"size": (10, 10), "num_boxes": 4}),
    ("points24", "points24", {}),
    ("ezpoints", "ezpoints", {}),
    ("numberline", "numberline", {}),
    ("blackjack", "blackjack", {}),
]
QUICK_CONFIGS = ("sokoban_6x6_1", "sokoban_10x10_4")
PEER_LABEL = "sokoban_10x10_4"


def make_env(name: str, overrides: dict[str, Any], render: bool):
    """`(env, params)` from the registry, images switched off where the env has the switch."""
    takes_switch = "render_image" in inspect.signature(env_class(name).__init__).parameters
    if takes_switch:
        overrides = {**overrides, "render_image": render}
    return make(name, **overrides)


def our_loop(env, params, batch: int, steps: int, render: bool) -> tuple[Callable, Any]:
    """A jitted `(carry, key) -> carry` running `steps` batched steps, and its first carry."""
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    num_actions = env.num_actions

    def kept(obs):  # without images: leave them out, XLA then never renders them
        return obs if render else {k: v for k, v in obs.items() if k != "image"}

    def turn(carry, key):
        state, _ = carry
        action_key, step_key = jax.random.split(key)
        actions = jax.random.randint(action_key, (batch,), 0, num_actions)
        obs, state, reward, terminated, truncated, _ = step(
            jax.random.split(step_key, batch), state, actions, params
        )
        return (state, kept(obs)), reward.sum()

    @jax.jit
    def run(carry, key):
        return jax.lax.scan(turn, carry, jax.random.split(key, steps))[0]

    obs, state = jax.jit(reset)(jax.random.split(jax.random.key(0), batch), params)
    return run, (state, kept(obs))


def jumanji_loop(batch: int, steps: int, auto_reset: bool) -> tuple[Callable, Any]:
    from jumanji.environments.routing.sokoban import Sokoban as JumanjiSokoban
    from jumanji.environments.routing.sokoban.generator import ToyGenerator
    from jumanji.wrappers import AutoResetWrapper

    env = JumanjiSokoban(generator=ToyGenerator())
    if auto_reset:
        env = AutoResetWrapper(env, next_obs_in_extras=True)
    step = jax.vmap(env.step)
    num_actions = int(env.action_spec.num_values)

    def turn(carry, key):
        state, _ = carry
        actions = jax.random.randint(key, (batch,), 0, num_actions)
        state, timestep = step(state, actions)
        return (state, timestep.observation), timestep.reward.sum()

    @jax.jit
    def run(carry, key):
        return jax.lax.scan(turn, carry, jax.random.split(key, steps))[0]

    state, timestep = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(0), batch))
    return run, (state, timestep.observation)


class Measured:
    """One loop: compiled on creation, then timed on demand."""

    def __init__(self, label: str, run: Callable, carry: Any, batch: int, steps: int):
        self.label, self.run, self.carry = label, run, carry
        self.steps_per_call = batch * steps
        start = time.perf_counter()
        jax.block_until_ready(run(carry, jax.random.key(1)))
        first = time.perf_counter() - start
        warm = self.time_once(2)
        self.compile_s = max(first - warm, 0.0)
        self.rates: list[float] = []

    def time_once(self, seed: int) -> float:
        start = time.perf_counter()
        jax.block_until_ready(self.run(self.carry, jax.random.key(seed)))
        return time.perf_counter() - start

    def measure(self, seed: int) -> float:
        rate = self.steps_per_call / self.time_once(seed)
        self.rates.append(rate)
        return rate

    @property
    def median(self) -> float:
        return float(np.median(self.rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer envs and steps (< 1 minute)")
    parser.add_argument("--batch", type=int, default=4096, help="envs per step without images")
    parser.add_argument("--render-batch", type=int, default=1024, help="envs per step with images")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed call")
    parser.add_argument(
        "--render-steps", type=int, default=None, help="steps per timed call with images"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    steps = args.steps or (20 if args.quick else 100)
    render_steps = args.render_steps or (4 if args.quick else 10)  # images cost ~100x more
    repeats = 3 if args.quick and args.repeats == 5 else args.repeats
    print(
        f"devices: {jax.devices()}  batch {args.batch} ({steps} steps per call), with images "
        f"{args.render_batch} ({render_steps} steps per call), {repeats} repeats",
        flush=True,
    )

    loops: dict[str, Measured] = {}
    skipped: dict[str, str] = {}
    for label, name, overrides in CONFIGS:
        if args.quick and label not in QUICK_CONFIGS:
            continue
        for render in (False, True):
            if args.quick and render and label != QUICK_CONFIGS[0]:
                continue
            key = f"{label}{'_image' if render else ''}"
            batch = args.render_batch if render else args.batch
            n = render_steps if render else steps
            try:
                env, params = make_env(name, overrides, render)
            except (ImportError, ValueError) as err:  # an env not written yet
                skipped[label] = f"{type(err).__name__}: {err}"
                break
            loops[key] = Measured(key, *our_loop(env, params, batch, n, render), batch, n)
            print(f"compiled {key} in {loops[key].compile_s:.1f} s", flush=True)
    loops["jumanji_sokoban"] = Measured(
        "jumanji_sokoban", *jumanji_loop(args.batch, steps, auto_reset=False), args.batch, steps
    )
    loops["jumanji_sokoban_autoreset"] = Measured(
        "jumanji_sokoban_autoreset",
        *jumanji_loop(args.batch, steps, auto_reset=True),
        args.batch,
        steps,
    )

    ours = loops[PEER_LABEL]
    ratios, ratios_autoreset = [], []
    for seed in range(repeats):
        # Alternate ours and the peer within each repeat; the others follow.
        ours_rate = ours.measure(10 + seed)
        ratios.append(ours_rate / loops["jumanji_sokoban"].measure(10 + seed))
        ratios_autoreset.append(ours_rate / loops["jumanji_sokoban_autoreset"].measure(10 + seed))
        for key, loop in loops.items():
            if key not in (PEER_LABEL, "jumanji_sokoban", "jumanji_sokoban_autoreset"):
                loop.measure(10 + seed)

    for key, loop in loops.items():
        print(f"{key:28s} {loop.median:>12,.0f} steps/s   compile {loop.compile_s:5.2f} s")
    for label, why in skipped.items():
        print(f"{label:32s} skipped ({why})")
    result = {
        "bench": "envs",
        "sokoban_vs_jumanji": round(float(np.median(ratios)), 3),
        "sokoban_vs_jumanji_autoreset": round(float(np.median(ratios_autoreset)), 3),
        "steps_per_s": {key: round(loop.median) for key, loop in loops.items()},
        "compile_s": {key: round(loop.compile_s, 2) for key, loop in loops.items()},
        "skipped": sorted(skipped),
        "batch": args.batch,
        "render_batch": args.render_batch,
        "steps": steps,
        "render_steps": render_steps,
        "repeats": repeats,
        "quick": args.quick,
        "device": str(jax.devices()[0].platform),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
