"""Update-step benchmark: what the GTR-Turbo teacher costs the update, in time and memory.

    python experiments/bench/update.py [--quick] [--repeats 5]

- time: the compiled `train.update_step` in modes `ppo`, `turbo_kl`, `turbo_sft` and
  `turbo_kl_dense` (`turbo_kl` with `merge_space="dense"`: the paper's merge of the LoRA products)
  on the same LoRA model (random `tiny` checkpoint; `--quick`: a 1-layer model of width 32) and
  the same batch.
  Each mode is compiled ahead of time (compile time reported apart), run once to warm up, then the
  modes alternate, `--updates` updates each per repeat; medians of the per-update wall times, and
  of the process CPU times (`cpu_ms`, `*_over_ppo_cpu`: steadier than wall time on a machine
  shared with other jobs, where waiting for a core inflates the wall time). The teacher merges every
  update (`merge_interval=1`), so each turbo update pays for a TIES merge over the snapshot buffer;
  `turbo_sft` is the update only (the teacher's replies come with the batch: no teacher generation),
  with `UpdateConfig.sft_minibatch_size` at its default unless `--sft-rows` is given.
  Issue #5's bounds: `turbo_kl_over_ppo <= 1.10` (the paper: 89 h vs 86 h), `turbo_sft_over_ppo
  <= 1.5`.
- memory: bytes of the `TrainState` parts. With LoRA the teacher is an adapter set on the shared
  base (no second base copy): `teacher_bytes_over_lora_bytes` = teacher adapters / policy adapters
  (bound: 2). The dense teacher holds one float32 delta per adapted kernel instead
  (`dense_teacher_bytes_over_lora_bytes`, reported, no bound). The other memory the turbo modes
  add is reported apart: the snapshot ring buffer of task vectors (`snapshot_bytes`,
  `snapshot_capacity` adapter copies) and theta_0, and the DAgger buffer of `turbo_sft`; plus
  XLA's temporary bytes of each compiled step (`memory_analysis`). `ppo` holds no teacher part.
The last line is one JSON object: {"bench": "update", "turbo_kl_over_ppo": ..., ...}.
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
import numpy as np
from flax import nnx

from gtr_turbo_jax.models import LoRAConfig, ValueHead, from_pretrained, get_config
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.train.config import UpdateConfig
from gtr_turbo_jax.train.state import init_train_state
from gtr_turbo_jax.train.update import update_step

MODES = ("ppo", "turbo_kl", "turbo_sft", "turbo_kl_dense")
IMAGE_GRID = (1, 8, 8)  # 64 patches -> 16 image tokens


def _model_config(quick: bool):
    return get_config("micro" if quick else "tiny")


def make_batch(config, turns: int, envs: int, prompt_len: int, reply_len: int, seed: int = 0):
    """Left-padded image prompts, replies of thoughts / action / EOS, the teacher's replies with
    their thoughts labelled (one env in two corrected), episodes ending on the last turn."""
    rng = np.random.default_rng(seed)
    image = [config.vision_start_token_id]
    image += [config.image_token_id] * (int(np.prod(IMAGE_GRID)) // 4)
    image += [config.vision_end_token_id]
    head = [1, *image]
    prompt_ids = rng.integers(8, config.text.vocab_size, (turns, envs, prompt_len)).astype(np.int32)
    prompt_ids[..., : len(head)] = head
    reply = rng.integers(8, config.text.vocab_size, (turns, envs, reply_len)).astype(np.int32)
    reply[..., -1] = config.text.eos_token_id
    positions = np.arange(reply_len)
    thought = np.broadcast_to(positions < reply_len // 2, reply.shape)
    action = np.broadcast_to(
        (positions >= reply_len // 2) & (positions < reply_len - 1), reply.shape
    )
    labelled = thought & (np.arange(envs) % 2 == 0)[None, :, None]
    terminated = np.zeros((turns, envs), bool)
    terminated[-1] = True
    batch = Batch.dummy(
        turns, envs, prompt_len, reply_len, config.vision.patch_dim, IMAGE_GRID, reply_len
    )
    return batch.replace(
        prompt_ids=jnp.asarray(prompt_ids),
        prompt_mask=jnp.ones(prompt_ids.shape, jnp.int32),
        image_patches=jnp.asarray(
            rng.standard_normal(batch.image_patches.shape).astype(np.float32)
        ),
        response_ids=jnp.asarray(reply),
        response_mask=jnp.ones(reply.shape, bool),
        thought_mask=jnp.asarray(thought),
        action_mask=jnp.asarray(action),
        reward=jnp.asarray(rng.standard_normal((turns, envs)).astype(np.float32)),
        terminated=jnp.asarray(terminated),
        teacher_ids=jnp.asarray(reply),
        teacher_label_mask=jnp.asarray(labelled),
    )


def tree_bytes(tree) -> int:
    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(tree))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1-layer model, smaller batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--updates", type=int, default=2, help="updates per mode per repeat")
    parser.add_argument(
        "--sft-rows", type=int, default=None, help="turbo_sft: sft_minibatch_size (default: auto)"
    )
    args = parser.parse_args()
    for name in ("repeats", "updates") + (("sft_rows",) if args.sft_rows is not None else ()):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: expected a positive integer")

    model_config = _model_config(args.quick)
    lora = LoRAConfig(rank=8, alpha=16.0, dropout=0.0)
    turns, envs = 2, 8 if args.quick else 16
    prompt_len, reply_len = 48, 24 if args.quick else 32
    batch = make_batch(model_config, turns, envs, prompt_len, reply_len)
    base_config = UpdateConfig(
        ppo_epochs=4,  # RL4VLM's / the paper's
        minibatch_size=8,
        grad_accum_steps=1,
        merge_interval=1,
        snapshot_capacity=8,
        dagger_capacity=64,
        learning_rate=1e-4,
        grad_clip=1.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_random_checkpoint(Path(tmp) / "ckpt", model_config, seed=0)
        setups = {}
        for mode in MODES:
            config = base_config.replace(mode=mode.removesuffix("_dense"))
            if mode.endswith("_dense"):
                config = config.replace(merge_space="dense")
            if mode == "turbo_sft":
                config = config.replace(sft_minibatch_size=args.sft_rows)
            model = from_pretrained(checkpoint, lora=lora, seed=0)
            head = ValueHead(model_config.text.hidden_size, widths=(64,), rngs=nnx.Rngs(1))
            defs, state = init_train_state(model, head, config, jax.random.key(0), batch)
            setups[mode] = (defs, config, state)

    parts = ("base", "policy", "teacher", "initial", "snapshots", "dagger", "opt_state")
    memory = {
        mode: {part: tree_bytes(getattr(state, part)) for part in parts}
        for mode, (_, _, state) in setups.items()
    }
    kl_state = setups["turbo_kl"][2]
    lora_bytes = tree_bytes(kl_state.policy)
    teacher_bytes = tree_bytes(kl_state.teacher)
    dense_teacher_bytes = tree_bytes(setups["turbo_kl_dense"][2].teacher)

    compiled, compile_s = {}, {}
    for mode, (defs, config, state) in setups.items():
        start = time.perf_counter()
        compiled[mode] = update_step.lower(state, batch, defs, config).compile()
        compile_s[mode] = time.perf_counter() - start
    temp_bytes, states = {}, {}
    for mode, executable in compiled.items():
        analysis = executable.memory_analysis()
        temp_bytes[mode] = None if analysis is None else int(analysis.temp_size_in_bytes)
        states[mode], metrics = executable(setups[mode][2], batch)  # warm-up
        jax.block_until_ready(metrics)
        if float(metrics["finite"]) != 1.0:
            raise RuntimeError(f"mode {mode}: the warm-up update was not finite: {metrics}")

    seconds = {mode: [] for mode in MODES}
    cpu_seconds = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:  # alternating: machine load drifts hit every mode alike
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.updates):
                states[mode], metrics = compiled[mode](states[mode], batch)
            jax.block_until_ready((states[mode], metrics))
            seconds[mode].append((time.perf_counter() - start) / args.updates)
            cpu_seconds[mode].append((time.process_time() - cpu_start) / args.updates)
    median = {mode: statistics.median(times) for mode, times in seconds.items()}
    cpu = {mode: statistics.median(times) for mode, times in cpu_seconds.items()}

    for mode in MODES:
        print(
            f"{mode:>14}: update {median[mode] * 1e3:8.1f} ms (median of {args.repeats}; CPU "
            f"{cpu[mode] * 1e3:8.1f} ms), "
            f"compile {compile_s[mode]:6.1f} s, XLA temp {temp_bytes[mode]} B"
        )
    print(
        f"LoRA adapters {lora_bytes} B, teacher {teacher_bytes} B, base {memory['turbo_kl']['base']}"
        f" B, snapshots {memory['turbo_kl']['snapshots']} B, DAgger (turbo_sft) "
        f"{memory['turbo_sft']['dagger']} B"
    )
    result = {
        "bench": "update",
        "quick": args.quick,
        "backend": jax.default_backend(),
        "model": "1-layer w32" if args.quick else "tiny",
        "samples": turns * envs,
        "ppo_epochs": base_config.ppo_epochs,
        "turbo_kl_over_ppo": median["turbo_kl"] / median["ppo"],
        "turbo_sft_over_ppo": median["turbo_sft"] / median["ppo"],
        "turbo_kl_dense_over_ppo": median["turbo_kl_dense"] / median["ppo"],
        "teacher_bytes_over_lora_bytes": teacher_bytes / lora_bytes,
        "dense_teacher_bytes_over_lora_bytes": dense_teacher_bytes / lora_bytes,
        "sft_rows": setups["turbo_sft"][1].sft_rows,
        "minibatch_size": base_config.minibatch_size,
        **{f"{mode}_over_ppo_cpu": cpu[mode] / cpu["ppo"] for mode in MODES[1:]},
        "update_ms": {mode: median[mode] * 1e3 for mode in MODES},
        "cpu_ms": {mode: cpu[mode] * 1e3 for mode in MODES},
        "compile_s": compile_s,
        "xla_temp_bytes": temp_bytes,
        "lora_bytes": lora_bytes,
        "teacher_bytes": teacher_bytes,
        "dense_teacher_bytes": dense_teacher_bytes,
        "base_bytes": memory["turbo_kl"]["base"],
        "snapshot_bytes": memory["turbo_kl"]["snapshots"],
        "dagger_bytes": memory["turbo_sft"]["dagger"],
        "state_bytes": {mode: sum(memory[mode].values()) for mode in MODES},
        "state_part_bytes": memory,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
