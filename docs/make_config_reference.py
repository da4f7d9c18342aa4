"""Writes `docs/config_reference.md` from the config schema itself.

It walks `train.run_config.base_config` (every key and its default, for the tiny CPU preset and the
real-model presets), each env file in `configs/` (what differs per env) and `smoke()` (what
`--smoke` changes), and gives every key the meaning kept in `MEANINGS` below: the one place a
key's meaning is written. A key without a meaning (or a meaning without a key) is an error.

    python docs/make_config_reference.py          # rewrites docs/config_reference.md
    python docs/make_config_reference.py --check  # exits 1 if the file is out of date
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from gtr_turbo_jax.train.run_config import MODEL_PRESETS, base_config, shipped_configs, smoke

OUTPUT = Path(__file__).resolve().parent / "config_reference.md"
SMALL_PRESET, REAL_PRESET = "tiny", "qwen2.5-vl-3b"
SECTIONS = ("env", "early_termination", "model", "prompt", "sampling", "format_reward", "rl",
            "train", "warm_start")  # fmt: skip

MEANINGS: dict[str, str] = {
    # env: `envs.make` overrides; which keys exist depends on the env file.
    "env.name": "the environment (`envs.ENVS`, `envs.PYTHON_ENVS`): sokoban, points24, ezpoints, numberline, blackjack, alfworld",
    "env.size": "Sokoban room (rows, columns), walls included; the level bank of that size is used",
    "env.num_boxes": "Sokoban boxes (and targets) per level",
    "env.tile_size": "Sokoban pixels per grid cell in the rendered image (28: one merged visual token per cell)",
    "env.max_steps_in_episode": "turns before the episode is truncated (Sokoban; ALFWorld: actions, 40 in the paper)",
    "env.blocked_move_penalty": "Sokoban reward added to a move that leaves everything in place (into a wall, or a box that cannot move); 0 is gym-sokoban's rules",
    "env.config_path": "a yaml config of ALFWorld's own; empty: `$ALFWORLD_CONFIG`, else the values of ALFWorld's `configs/base_config.yaml` (`envs.alfworld.default_config`)",
    "env.env_type": "ALFWorld's env: `AlfredThorEnv` (visual, AI2-THOR) or `AlfredTWEnv` (text only, a black image)",
    "env.eval_split": "ALFWorld's split the held-out evaluation plays (`eval_out_of_distribution` or `eval_in_distribution`)",
    "env.vocabulary": "ALFWorld: a file of the words the prompt can write (replaces the shipped object names and template words; numbers, punctuation and command numbers stay); empty: the shipped list",
    "env.image_size": "ALFWorld: the THOR frame is resized to this many pixels square (a multiple of 28 for real models)",
    "env.task_words": "ALFWorld: words of the task description the prompt holds",
    "env.tokens_per_word": "ALFWorld: a text field is cut past this many tokens a word of its size (0: the vocabulary's mean), so the prompt is not padded to every word at the longest one's",
    "env.observation_words": "ALFWorld: words of the current observation text the prompt holds (more are cut, `info['cut_words']`)",
    "env.command_words": "ALFWorld: words of the numbered admissible commands the prompt holds",
    "env.max_number": "ALFWorld: the largest number the prompt can write (object instances such as `cabinet 12`)",
    "env.repeat_limit": "ALFWorld: this many identical actions in a row truncate the episode (METHOD.md section 5)",
    "env.repeat_penalty": "ALFWorld: reward added when `repeat_limit` identical actions truncate the episode",
    "env.won_reward": "ALFWorld: reward of a won game (RL4VLM: `50 * won + goal-condition rate` each step)",
    "env.illegal_penalty": "ALFWorld: reward added for a command number past the state's list",
    "env.solvable_only": "Points24 deals only hands that can make 24 (the papers deal uniformly)",
    "early_termination": "any reward <= -1 ends the episode (GTR trains Points24 this way)",
    # model
    "model.size": "named model config: micro, tiny (random init) or qwen2.5-vl-3b / -7b (need `model.path`)",
    "model.path": "local Hugging Face model directory (weights, tokenizer, processor); empty: random init of `model.size`",
    "model.dtype": "weights and activations: float32, bfloat16 or float16 (LoRA adapters stay float32)",
    "model.lora_rank": "LoRA rank on every linear layer, vision tower included; 0: every parameter trains",
    "model.lora_alpha": "LoRA alpha (the adapter's scale is alpha / rank)",
    "model.lora_dropout": "dropout on the LoRA input during training",
    "model.value_widths": "hidden widths of the value head's MLP (the paper: 1024, 512)",
    "model.init_seed": "seed of the random init (model without `path`, LoRA adapters, value head)",
    # prompt
    "prompt.style": "prompt wording: full (the papers' texts), brief (short texts for tiny models) or compact (the state only: the tiny Sokoban default)",
    "prompt.history_length": "the agent's last K actions listed in the prompt (0: none)",
    "prompt.positions": "Sokoban only: the prompt lists the player, box and target cells as (row, column), a symbolic hint for tiny models that cannot count grid rows and columns",
    # sampling
    "sampling.temperature": "rollout sampling temperature (> 0; `rl.temperature` must equal it)",
    "sampling.top_k": "rollout top-k (0: off)",
    "sampling.top_p": "rollout nucleus mass (1.0: off)",
    "sampling.repetition_penalty": "rollout repetition penalty (HF's rule) on the prompt's and the reply's tokens so far (1.0: off)",
    "sampling.max_new_tokens": "most tokens in one reply (a reply cut at this length rarely parses)",
    "sampling.eval_temperature": "evaluation temperature; 0 plays greedily",
    "sampling.constrain_action": 'after `"action": "` only a legal action\'s tokens may be sampled (rollouts and evaluation; not the paper\'s)',
    # format_reward
    "format_reward.valid": "added to the advantage of a reply that parses as the required JSON",
    "format_reward.invalid": "added to the advantage of a reply that does not parse",
    "format_reward.gtr_valid": "mode gtr: the format reward of a valid reply, where it differs (Points24: GTR's +5; None: `valid`)",
    "format_reward.gtr_invalid": "mode gtr: the format reward of an invalid reply, where it differs (Points24: GTR's 0; None: `invalid`)",
    # rl: train.config.UpdateConfig
    "rl.mode": "ppo (RL4VLM), gtr (oracle teacher, SFT), turbo_sft (merged teacher, SFT) or turbo_kl (merged teacher, KL)",
    "rl.gamma": "discount of the turn-level GAE",
    "rl.gae_lambda": "lambda of the turn-level GAE",
    "rl.thought_lambda": "weight of the thought tokens' log-probs in a reply's action log-prob",
    "rl.thought_skip_tokens": "leave the reply's first N tokens out of the thought sum (the authors' code: 2; 0: every thought token)",
    "rl.advantage": "gae (the paper: turn-level GAE on the critic) or group (GiGPO: each level played group_size times, episode return and same-state return-to-go minus their group means; no critic in the advantage)",
    "rl.group_size": "rl.advantage=group: envs that play one level from the same start (train.num_envs must be a multiple)",
    "rl.step_weight": "rl.advantage=group: weight of the same-state (step) term beside the episode term",
    "rl.clip_eps": "PPO ratio clip",
    "rl.value_clip_eps": "value-loss clip around the old value (None: unclipped)",
    "rl.value_coef": "weight of the value loss",
    "rl.ratio_guard": "if any ratio in a micro-batch exceeds it, only the clipped term is used (None: off; RL4VLM's code: 10)",
    "rl.rescore": "recompute the old log-probs, values and entropies with a forward over the batch (False: the rollout's own, as RL4VLM stores them at acting time)",
    "rl.pack_trained": "each PPO epoch takes the trained samples first and skips the optimizer steps holding none (group advantages leave an env's turns after its first episode untrained): fewer, fuller Adam steps, no forward for those samples",
    "rl.ratio_level": "PPO ratio per reply (sequence: RL4VLM, on the lambda-weighted log-prob) or per token (token: each token clipped on its own, a lambda-weighted token mean)",
    "rl.value_lr_scale": "the value head's Adam steps relative to the policy's (1: the paper's one rate)",
    "rl.value_backbone_grad": "whether the value loss trains the shared backbone too (True: the paper) or the value head alone",
    "rl.ppo_epochs": "passes over each update's batch",
    "rl.minibatch_size": "samples per forward/backward (a micro-batch)",
    "rl.grad_accum_steps": "micro-batches whose gradients are averaged into one optimizer step",
    "rl.learning_rate": "Adam learning rate at the first update",
    "rl.final_learning_rate": "learning rate at the end of the cosine decay",
    "rl.lr_decay_updates": "updates the cosine spans (0: the whole run, train.updates), flat at final_learning_rate after",
    "rl.warmup_updates": "updates over which the learning rate ramps up linearly (not the paper's; 0: none): Adam's first steps are full-size on every parameter",
    "rl.adam_eps": "Adam epsilon",
    "rl.grad_clip": "global gradient-norm clip",
    "rl.temperature": "temperature of the log-probs PPO scores: the sampler's, so it must equal `sampling.temperature`",
    "rl.advantage_eps": "epsilon of the advantage normalisation (A - mean) / (std + eps)",
    "rl.kl_estimator": "thought-KL estimator: k1_clipped (the paper's best), k1, abs, k3 (on the sampled tokens) or forward (KL(teacher || agent) over the whole vocabulary: one more policy forward per sample)",
    "rl.kl_clip": "upper clip of the per-token k1 (k1_clipped)",
    "rl.kl_beta": "weight of the thought KL subtracted from the advantage (turbo_kl)",
    "rl.kl_invalid_value": "KL charged to an invalid reply (turbo_kl)",
    "rl.kl_scope": "tokens the KL covers: thought (the paper) or thought_action",
    "rl.kl_context": "the teacher's prompt for the KL: image (the paper) or blind (its vision tokens masked out, as the authors' released code)",
    "rl.sft_coef": "weight of the SFT loss on teacher replies (gtr, turbo_sft)",
    "rl.sft_minibatch_size": "DAgger rows paired with each PPO micro-batch (None: a quarter of minibatch_size)",
    "rl.format_reward_placement": "where the format reward enters: after_gae, in_gae or ignore (None: ignore for ppo, else after_gae)",
    "rl.merge_method": "teacher merge: ties or linear (SMA weights over the snapshots) or ema",
    "rl.merge_space": "dense (merge a @ b, the paper; a float32 copy of every adapted kernel, and 4 more with merge_window=all) or peft (PEFT's add_weighted_adapter on the snapshots' adapters, as the authors' code computes it; adapter-sized) or factored (merge LoRA a and b task vectors apart; adapter-sized)",
    "rl.merge_density": "TIES: fraction of each task vector kept by magnitude",
    "rl.merge_scale": "scale of the merged task vector added to theta_0",
    "rl.ema_alpha": "ema: teacher = alpha * policy + (1 - alpha) * teacher",
    "rl.merge_window": "which snapshots the SMA merge weighs: all (every snapshot of the run, as running sums: the paper) or ring (the last snapshot_capacity)",
    "rl.merge_interval": "updates between teacher merges",
    "rl.snapshot_capacity": "merge_window=ring: the policy snapshots (one per PPO epoch) the merge averages over, newest kept",
    "rl.dagger_capacity": "rows of the never-cleared DAgger buffer of teacher replies (gtr, turbo_sft)",
    "rl.teacher_source": "turbo modes: merged (the policy's merged checkpoints, GTR-Turbo), initial (the starting model for the whole run: the paper's static-teacher ablation) or external (turbo_kl: the fixed model at rl.teacher_path, On-Policy Distillation's teacher)",
    "rl.teacher_path": "teacher_source=external: a local HF directory, any size, the policy's tokenizer and image patches (not saved in checkpoints; eval and export do not read it)",
    "rl.dagger_sampling": "reservoir (a uniform sample of every correction so far, as GTR's never-cleared buffer) or ring (the latest rows only)",
    "rl.teacher_retries": "turbo_sft: samples again a teacher reply that does not parse, at temperature x1.1 per retry, capped at 0.9 (the authors')",
    # train
    "train.seed": "seed of everything random in the run (levels, sampling, init of the state)",
    "train.num_envs": "environments played in parallel",
    "train.turns_per_update": "turns each environment plays per update (env steps per update: num_envs * this)",
    "train.updates": "updates in the run",
    "train.eval_every": "updates between held-out evaluations (the last update is always evaluated)",
    "train.eval_episodes": "held-out episodes per evaluation",
    "train.checkpoint_every": "updates between checkpoints (the last update is always saved)",
    "train.keep_checkpoints": "newest checkpoints kept",
    "train.mesh.data": "devices on the mesh's data axis (each plays its own environments)",
    "train.mesh.fsdp": "devices on the mesh's fsdp axis (each also holds a shard of the parameters)",
    "train.tensorboard": "also write TensorBoard scalars to RUN_DIR/tb",
    "train.wandb_project": "Weights & Biases project to log to (empty: off; needs wandb installed)",
    "train.record_episodes": "episode GIFs saved at each evaluation (RUN_DIR/episodes)",
    # warm_start
    "warm_start.steps": "supervised steps on the solver's demonstrations before RL (0: none)",
    "warm_start.batch_size": "demonstration samples per warm-start step",
    "warm_start.learning_rate": "warm-start Adam learning rate",
    "warm_start.demos": "demonstration samples collected from the solver",
    "warm_start.noise": "fraction of demonstration steps that take a random action (an imperfect start leaves RL room)",
}


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"rl.mode": "turbo_kl", "train.mesh.data": 1, ...}` in the config's key order."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping | ml_collections.ConfigDict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def env_files() -> dict[str, Path]:
    return shipped_configs()


def env_config(path: Path, preset: str) -> ml_collections.ConfigDict:
    """`get_config(preset)` of a config file (not validated: real presets need a model path)."""
    spec = importlib.util.spec_from_file_location(f"_reference_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def section_of(key: str) -> str:
    return key.split(".")[0]


def value_text(value: Any) -> str:
    return f"`{value!r}`"


def base_defaults(preset: str) -> dict[str, Any]:
    """Every key but the env section's (which is each env file's own)."""
    flat = flatten(base_config({"name": "sokoban"}, preset))
    return {key: value for key, value in flat.items() if section_of(key) != "env"}


def per_env_values() -> list[tuple[str, str, Any, Any]]:
    """(env file, key, small-preset value, real-preset value) for the env section and every key
    an env file sets away from `base_config`'s default."""
    small_base, real_base = base_defaults(SMALL_PRESET), base_defaults(REAL_PRESET)
    rows = []
    for name, path in env_files().items():
        small = flatten(env_config(path, SMALL_PRESET))
        real = flatten(env_config(path, REAL_PRESET))
        for key, value in small.items():
            if section_of(key) == "env" or value != small_base[key] or real[key] != real_base[key]:
                rows.append((name, key, value, real[key]))
    return rows


def used_keys() -> set[str]:
    keys = set(base_defaults(SMALL_PRESET))
    keys |= {key for _, key, _, _ in per_env_values()}
    return keys


def missing_meanings() -> list[str]:
    return sorted(used_keys() - set(MEANINGS))


def stale_meanings() -> list[str]:
    return sorted(set(MEANINGS) - used_keys())


def check_presets() -> None:
    """The reference shows one real-model column: the real presets may differ in `model.size`
    only, or this script needs another column."""
    reals = [name for name in MODEL_PRESETS if name.startswith("qwen")]
    first = base_defaults(reals[0])
    for name in reals[1:]:
        other = base_defaults(name)
        differ = sorted(key for key in first if first[key] != other[key] and key != "model.size")
        if differ:
            raise SystemExit(f"presets {reals[0]} and {name} differ in {differ}: add a column")


def render() -> str:
    missing, stale = missing_meanings(), stale_meanings()
    if missing or stale:
        raise SystemExit(
            f"MEANINGS is out of step with the config schema: missing {missing}, stale {stale}"
        )
    check_presets()
    small, real = base_defaults(SMALL_PRESET), base_defaults(REAL_PRESET)
    reals = " / ".join(name for name in MODEL_PRESETS if name.startswith("qwen"))
    lines = [
        "# Config reference",
        "",
        "<!-- Generated by docs/make_config_reference.py from the config schema; do not edit. -->",
        "",
        "Every key of a run's config, its default and what it means. Set any of them with",
        "`--config.KEY=VALUE` (a Python literal or a bare word; the type must fit the default's),",
        "e.g. `gtr-turbo train --env=points24 --config.rl.kl_beta=0.5`. A config file is",
        "`configs/<env>.py`; `--config=configs/<env>.py:<preset>` picks the model preset",
        f"(`{SMALL_PRESET}` by default). The `{SMALL_PRESET}` column holds the defaults of the tiny",
        f"CPU model (also `micro`), the other those of the real models ({reals}, which need",
        "`--config.model.path`). The resolved config of a run is `RUN_DIR/config.json`.",
        "",
        "## Keys of every run",
    ]
    for section in SECTIONS[1:]:
        keys = [key for key in small if section_of(key) == section]
        lines += ["", f"### `{section}`", "", f"| key | {SMALL_PRESET} | {reals} | meaning |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| `{key}` | {value_text(small[key])} | {value_text(real[key])} | {MEANINGS[key]} |"
            for key in keys
        ]
    lines += [
        "",
        "## What each env file sets",
        "",
        "The `env` section (arguments of `envs.make`) and every key an env file sets away from the",
        "defaults above.",
        "",
        f"| config file | key | {SMALL_PRESET} | {reals} | meaning |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `configs/{name}.py` | `{key}` | {value_text(a)} | {value_text(b)} | {MEANINGS[key]} |"
        for name, key, a, b in per_env_values()
    ]
    config = env_config(env_files()["sokoban"], SMALL_PRESET)
    before, after = flatten(config), flatten(smoke(config))
    changed = [key for key in after if after[key] != before[key]]
    lines += [
        "",
        "## What `--smoke` changes",
        "",
        "`--smoke` (CI, the notebooks' small mode) keeps the pipeline and shrinks the sizes;",
        "explicit `--config.KEY=VALUE` overrides still win over it.",
        "",
        "| key | `--smoke` value |",
        "|---|---|",
    ]
    lines += [f"| `{key}` | {value_text(after[key])} |" for key in changed]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python docs/make_config_reference.py")
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
