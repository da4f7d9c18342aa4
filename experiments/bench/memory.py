"""Memory of the real-model presets, per device, from abstract shapes only (nothing downloaded).

    python experiments/bench/memory.py [--presets qwen2.5-vl-3b,qwen2.5-vl-7b] [--devices 1,4,8]
        [--env points24] [--parts update,turn] [--set rl.minibatch_size=8 ...] [--quick]

For each preset and device count N, a subprocess with N simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`) builds the run's static set-up
(`configs/<env>.py:<preset>`: LoRA, bfloat16 base weights as `from_pretrained` loads them, the
paper's batch and `UpdateConfig`) and the `TrainState` with `nnx.eval_shape` / `jax.eval_shape`,
lays it out on the mesh `(data=1, fsdp=N)` with `train.sharding`, then lowers and compiles:
- `update`: the update step (`train.sharding.sharded_update_step`, the preset's mode) on one
  rollout's batch;
- `turn`: one policy turn of the compiled rollout (`rollout.multiturn.make_policy_turn(...).act`:
  prompt -> prefill + value -> decode) for the run's envs, the weights in the state's layout.
It reads `compiled.memory_analysis()` (per device: arguments, outputs, temporaries, the outputs
that alias donated arguments) and the bytes per device of each `TrainState` part (its leaves'
shard shapes). `total` = arguments + outputs - aliased + temporaries: what must sit in device
memory at once.

Compiled for CPU, so a GPU / TPU program differs in its temporaries (not in its arguments), most
likely by needing less: XLA:CPU has no bfloat16 matmul, so it computes the matmuls in float32 and
hoists float32 copies of loop-invariant weights out of the decode loop and the update's scans; the
other way, the CPU branches of `jax.lax.platform_dependent` are the ones measured (row by row prompt
attention). The prompt length is the template's with the shipped tiny tokenizer (no Qwen tokenizer
here), longer than Qwen's BPE gives for the same text.

Default: every preset on 1, 4 and 8 devices but the 7B on 8 (its two compiles took 26 minutes on a
loaded 2-core machine; ask for it with `--devices 8`). `--quick`: the `micro` preset with rank-8
LoRA and a small batch, on 1 and 4 devices (about a minute; the test's). Prints a Markdown table of
bytes per device (GiB), one of the compile times and peak RSS, and last one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from gtr_turbo_jax.envs.wrappers import EpisodeStatistics
from gtr_turbo_jax.models import Qwen25VL, ValueHead
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.rollout.multiturn import init_rollout_state, make_policy_turn
from gtr_turbo_jax.text.image import image_grid_thw
from gtr_turbo_jax.train.run_config import load_config
from gtr_turbo_jax.train.setup import build_setup
from gtr_turbo_jax.train.sharding import (
    batch_shardings,
    env_axis_shardings,
    make_mesh,
    sharded_update_step,
    state_shardings,
)
from gtr_turbo_jax.train.state import init_train_state, model_defs

GIB = 2**30
REAL_PRESETS = ("qwen2.5-vl-3b", "qwen2.5-vl-7b")
DEFAULT_DEVICES = (1, 4, 8)
# Left out unless `--devices` names them: too slow to compile on a small machine.
SLOW_BY_DEFAULT = {("qwen2.5-vl-7b", 8)}
PARTS = ("base", "policy", "value_head", "teacher", "initial", "snapshots", "opt_state", "dagger")
# `--quick`: the micro model with LoRA (as the real presets) and a batch that compiles in seconds.
QUICK_OVERRIDES = (
    "--config.model.lora_rank=8",
    "--config.train.num_envs=8",
    "--config.train.turns_per_update=2",
    "--config.rl.minibatch_size=4",
    "--config.rl.grad_accum_steps=2",
    "--config.rl.ppo_epochs=1",
    "--config.sampling.max_new_tokens=16",
)
MEMORY_FIELDS = {
    "arguments": "argument_size_in_bytes",
    "outputs": "output_size_in_bytes",
    "aliased": "alias_size_in_bytes",
    "temp": "temp_size_in_bytes",
}


# -- the worker: one preset on one mesh, in a process with the right device count ---------------


def run_config(preset: str, env: str, quick: bool, settings: tuple[str, ...] = ()):
    """The run config of `env:preset`, as `gtr-turbo train` would load it, with `settings`
    (`rl.minibatch_size=4`) applied. A real preset's `model.path` is needed by the loader only:
    its shapes are the named config's."""
    overrides = [f"--config.{setting}" for setting in settings]
    if quick:
        return load_config(f"{env}:micro", [*QUICK_OVERRIDES, *overrides])
    config = load_config(f"{env}:{preset}", ["--config.model.path=/nonexistent", *overrides])
    config.model.path = ""  # build_setup then takes the named config's shapes
    return config


def abstract_run(config):
    """`(setup, defs, state, batch)`: the run's static set-up, the model definitions and the
    `TrainState` and rollout `Batch` as `ShapeDtypeStruct` trees (nothing allocated)."""
    setup = build_setup(config)
    # `from_pretrained(path, dtype)` stores the base weights in the compute dtype.
    model_config = setup.model_config.replace(param_dtype=setup.model_config.dtype)
    setup = dataclasses.replace(setup, model_config=model_config)
    seed, widths = config.model.init_seed, tuple(config.model.value_widths)
    hidden = model_config.text.hidden_size

    def modules():
        model = Qwen25VL(model_config, lora=setup.lora, rngs=nnx.Rngs(seed))
        return model, ValueHead(hidden, widths=widths, rngs=nnx.Rngs(seed + 1))

    height, width, _ = setup.env.image_shape
    grid = image_grid_thw(height, width, setup.image_config)
    reply = setup.sampling.max_new_tokens

    def batch_like():
        return Batch.dummy(
            config.train.turns_per_update,
            config.train.num_envs,
            setup.template.max_length,
            reply,
            setup.image_config.patch_dim,
            grid,
            teacher_len=reply if setup.update.uses_sft else 1,
        )

    def state():
        model, head = modules()
        return init_train_state(model, head, setup.update, jax.random.key(0), batch_like())[1]

    defs = model_defs(*nnx.eval_shape(modules))
    return setup, defs, jax.eval_shape(state), jax.eval_shape(batch_like)


def leaf_bytes(leaf, sharding) -> int:
    """Bytes of one device's shard of `leaf` (a PRNG key counts its raw key data)."""
    dtype = leaf.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return 8 * math.prod(sharding.shard_shape(leaf.shape))
    return math.prod(sharding.shard_shape(leaf.shape)) * dtype.itemsize


def tree_bytes(tree, shardings) -> int:
    """Bytes per device of a tree of `ShapeDtypeStruct`s laid out by `shardings`."""
    sizes = jax.tree.map(leaf_bytes, tree, shardings)
    return int(sum(jax.tree.leaves(sizes)))


def memory(compiled) -> dict[str, int]:
    """`memory_analysis()` of a compiled program, per device, and the total it implies."""
    stats = compiled.memory_analysis()
    out = {name: int(getattr(stats, field)) for name, field in MEMORY_FIELDS.items()}
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temp"]
    return out


def peak_rss() -> int:
    """This process's peak resident memory so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_compile(jitted, *args) -> tuple[object, dict[str, float]]:
    """`jitted` lowered for `args` and compiled; the seconds of each and the peak RSS after."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    return compiled, {
        "lower_s": round(lowered_at - start, 1),
        "compile_s": round(done - lowered_at, 1),
        "peak_rss_bytes": peak_rss(),
    }


def compile_update(setup, defs, mesh, state, state_sharding, batch):
    """The sharded update step compiled for the abstract state and batch."""
    batch_sharding = batch_shardings(batch, mesh)
    step = sharded_update_step(defs, setup.update, mesh, state_sharding, batch_sharding)
    compiled, timing = timed_compile(step, state, batch)
    return compiled, timing, tree_bytes(batch, batch_sharding)


def compile_turn(setup, defs, mesh, state, state_sharding, num_envs: int):
    """One policy turn of the compiled rollout for `num_envs` envs (split over every device, as
    `gtr-turbo train` places the rollout's carry), on the state's base and adapters."""
    height, width, _ = setup.env.image_shape
    grid = image_grid_thw(height, width, setup.image_config)
    policy_turn = make_policy_turn(
        setup.template, setup.image_config, setup.sampling, defs, grid, constraint=setup.constraint
    )
    spec = setup.spec

    def turn(base, policy, value_head, obs, history, key):
        params = nnx.merge_state(policy, base)  # as `make_rollout`'s run does
        return policy_turn.act(params, value_head, obs, history, spec, key)

    carry = jax.eval_shape(
        lambda key: init_rollout_state(
            EpisodeStatistics(setup.env),
            setup.env_params,
            key,
            num_envs,
            setup.template.history_length,
        ),
        jax.random.key(0),
    )
    carry_sharding = env_axis_shardings(carry, num_envs, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    weights = (state.base, state.policy, state.value_head)
    weight_sharding = (state_sharding.base, state_sharding.policy, state_sharding.value_head)
    jitted = jax.jit(
        turn,
        in_shardings=(*weight_sharding, carry_sharding.obs, carry_sharding.history, replicated),
    )
    return timed_compile(jitted, *weights, carry.obs, carry.history, carry.key)


def measure(args, preset: str, devices: int) -> dict:
    """One row: the state's part bytes and each compiled program's memory on `(1, devices)`."""
    if jax.device_count() != devices:
        raise RuntimeError(f"expected {devices} devices, found {jax.devices()}")
    config = run_config(preset, args.env, args.quick, args.set)
    setup, defs, state, batch = abstract_run(config)
    mesh = make_mesh(1, devices)
    state_sharding = state_shardings(state, mesh)
    row = {
        "preset": "micro" if args.quick else preset,
        "env": args.env,
        "settings": list(args.set),
        "mesh": [1, devices],
        "samples": int(batch.num_samples),
        "prompt_len": int(setup.template.max_length),
        "reply_len": int(setup.sampling.max_new_tokens),
        "mode": setup.update.mode,
        "state_bytes": {
            part: tree_bytes(getattr(state, part), getattr(state_sharding, part)) for part in PARTS
        },
    }
    row["state_bytes"]["total"] = sum(row["state_bytes"].values())
    if "update" in args.parts:
        compiled, timing, batch_bytes = compile_update(
            setup, defs, mesh, state, state_sharding, batch
        )
        row["update"] = {**memory(compiled), **timing, "batch": batch_bytes}
        del compiled  # freed before the next compile
    if "turn" in args.parts:
        compiled, timing = compile_turn(
            setup, defs, mesh, state, state_sharding, config.train.num_envs
        )
        row["turn"] = {**memory(compiled), **timing, "envs": config.train.num_envs}
        del compiled
    return row


# -- the driver: one subprocess per (preset, device count) ---------------------------------------


def spawn(preset: str, devices: int, args) -> dict:
    """Runs `measure` in a subprocess with `devices` simulated CPU devices; adds its wall time and
    its peak RSS (from the kernel's accounting of the child)."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(devices)]
    command += ["--presets", preset, "--env", args.env, "--parts", ",".join(args.parts)]
    command += ["--quick"] if args.quick else []
    command += [f"--set={setting}" for setting in args.set]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # wait4: the child's own rusage
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{preset} on {devices} device(s): the worker exited with {code}")
    row = json.loads(stdout.strip().splitlines()[-1])
    row["wall_s"] = round(time.perf_counter() - start, 1)
    row["child_peak_rss_bytes"] = usage.ru_maxrss * 1024
    return row


def gib(value: int) -> str:
    """GiB, two decimals, or two significant digits below 0.1 (a positive size never reads 0)."""
    value /= GIB
    return f"{value:.2f}" if value >= 0.1 or value == 0 else f"{value:.2g}"


def memory_table(rows: list[dict]) -> str:
    """The Markdown table of bytes per device, in GiB."""
    header = (
        "| preset | mesh data x fsdp | update: args / temp / total | turn: args / temp / total | "
        "state: base / policy / teacher / initial / snapshots / opt / total |"
    )
    lines = [header, "|---|---|---|---|---|"]
    for row in rows:
        cells = [row["preset"], "{} x {}".format(*row["mesh"])]
        for program in ("update", "turn"):
            stats = row.get(program)
            numbers = (gib(stats[k]) for k in ("arguments", "temp", "total")) if stats else "-"
            cells.append(" / ".join(numbers))
        state = row["state_bytes"]
        names = ("base", "policy", "teacher", "initial", "snapshots", "opt_state", "total")
        cells.append(" / ".join(gib(state[k]) for k in names))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(rows: list[dict]) -> str:
    """The cost of measuring: lower + compile seconds of each program, the worker's wall time
    and peak RSS."""
    lines = [
        "| preset | mesh data x fsdp | update: lower + compile s | turn: lower + compile s | "
        "worker wall s | worker peak RSS GiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        seconds = [
            "{lower_s} + {compile_s}".format(**row[p]) if p in row else "-"
            for p in ("update", "turn")
        ]
        mesh = "{} x {}".format(*row["mesh"])
        rss = gib(row["child_peak_rss_bytes"])
        lines.append(
            f"| {row['preset']} | {mesh} | {' | '.join(seconds)} | {row['wall_s']} | {rss} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(REAL_PRESETS))
    parser.add_argument(
        "--devices", default=None, help="device counts (default 1,4,8 but 7B x 8; quick 1,4)"
    )
    parser.add_argument("--env", default="points24", help="the config file (env) of the run")
    parser.add_argument("--parts", default="update,turn", help="programs to compile")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a config override, e.g. --set rl.minibatch_size=4 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="the micro preset, a small batch")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.presets = ("micro",) if args.quick else tuple(args.presets.split(","))
    args.explicit_devices = args.devices is not None
    default = "1,4" if args.quick else ",".join(map(str, DEFAULT_DEVICES))
    args.devices = tuple(int(n) for n in (args.devices or default).split(","))
    args.parts = tuple(args.parts.split(","))
    args.set = tuple(args.set)
    unknown = set(args.parts) - {"update", "turn"}
    if unknown:
        parser.error(f"--parts {sorted(unknown)}: choose from update, turn")
    return args


def runs(args) -> list[tuple[str, int]]:
    """The (preset, device count) pairs to measure: every pair, less `SLOW_BY_DEFAULT` unless
    `--devices` was given."""
    pairs = [(preset, devices) for preset in args.presets for devices in args.devices]
    if args.explicit_devices:
        return pairs
    return [pair for pair in pairs if pair not in SLOW_BY_DEFAULT]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        row = measure(args, args.presets[0], args.worker)
        print(json.dumps(row))
        return
    rows = []
    for preset, devices in runs(args):
        rows.append(spawn(preset, devices, args))
        print(f"# {preset} on {devices} device(s): {json.dumps(rows[-1])}", flush=True)
    print(memory_table(rows))
    print()
    print(timing_table(rows))
    print(json.dumps({"bench": "memory", "quick": args.quick, "rows": rows}))


if __name__ == "__main__":
    main()
