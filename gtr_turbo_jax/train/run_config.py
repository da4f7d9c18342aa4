"""The run configuration: one ml_collections `ConfigDict` per run, loaded from `configs/<env>.py`.

Sections (every key has a default here; an env file changes what differs for its env):
- `env`: `name` plus `envs.make` overrides (constructor and EnvParams fields);
  `early_termination` (card games: any reward <= -1 ends the episode);
- `model`: `size` (a named config: micro, tiny, qwen2.5-vl-3b, qwen2.5-vl-7b), `path` (a local
  Hugging Face directory; empty: random init of `size`, the tiny CPU default), `dtype`, LoRA
  (`lora_rank` 0: every parameter trains), the value head's hidden `value_widths`;
- `prompt`: `style` (full / brief / compact), `history_length`, `positions` (the env's positions hint,
  `AgentSpec.positions`: Sokoban lists the player, box and target cells, the tiny default's hint);
- `sampling`: the rollout sampler (the paper: temperature 0.2, top-k 5, repetition penalty 1.2;
  the tiny presets: no penalty, their thoughts copy the prompt's cells);
  `eval_temperature` 0 plays greedily at evaluation;
- `format_reward`: added to every reply's advantage, `valid` / `invalid` (mode `gtr`:
  `gtr_valid` / `gtr_invalid` where set);
- `rl`: the fields of `train.UpdateConfig` (the key is `rl` because `update` is a ConfigDict method);
- `train`: the outer loop (`seed`, `num_envs`, `turns_per_update`, `updates`, eval and checkpoint
  cadence, the mesh, logging);
- `warm_start`: supervised warm start on the env solver's demonstrations (0 steps: none).

`load_config("configs/sokoban.py:tiny", ["--config.rl.kl_beta=0.5"])` is how the CLI builds one:
the part after `:` is passed to `get_config` (the model size), each override is type-checked against
the default's type, and an unknown key or a wrong type is one `ConfigError` line naming the key.
An env class of the user's own package, `load_config("my_pkg.corridor:Corridor")`, has no config
file: its config is `base_config` with an `env` section read off the class (`env_class_config`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from gtr_turbo_jax import envs
from gtr_turbo_jax.models import NAMED_CONFIGS
from gtr_turbo_jax.train.config import UpdateConfig

# The top-level configs/ folder, installed as the package `gtr_turbo_jax.configs` (setup.cfg), so
# an installed package finds it from any working directory. Located without importing it.
CONFIG_DIR = Path(importlib.util.find_spec("gtr_turbo_jax.configs").submodule_search_locations[0])
OVERRIDE_PREFIX = "--config."


def shipped_configs() -> dict[str, Path]:
    """The shipped config files by env name (`sokoban` -> .../configs/sokoban.py)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.py")) if not p.stem.startswith("_")}


class ConfigError(ValueError):
    """A bad config file, key or value; `str()` is the one line the CLI prints."""


# Model presets: `get_config(model=...)` in every env file starts from one of these.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "micro": dict(size="micro", path="", dtype="float32", lora_rank=0, value_widths=(32,)),
    "tiny": dict(size="tiny", path="", dtype="float32", lora_rank=0, value_widths=(64,)),
    # Real models: a local HF directory is required (`--config.model.path=...`); LoRA on every
    # linear layer as the paper, bf16 weights, the paper's value head.
    "qwen2.5-vl-3b": dict(
        size="qwen2.5-vl-3b", path="", dtype="bfloat16", lora_rank=128, value_widths=(1024, 512)
    ),
    "qwen2.5-vl-7b": dict(
        size="qwen2.5-vl-7b", path="", dtype="bfloat16", lora_rank=128, value_widths=(1024, 512)
    ),
}


def base_config(env: dict[str, Any], model: str = "tiny") -> ml_collections.ConfigDict:
    """Every key with its default; `env` is the env section (`name` + `envs.make` overrides)."""
    if model not in MODEL_PRESETS:
        raise ConfigError(f"unknown model size {model!r}; valid: {', '.join(MODEL_PRESETS)}")
    small = MODEL_PRESETS[model]["path"] == "" and model in ("micro", "tiny")
    return ml_collections.ConfigDict(
        {
            "env": dict(env),
            "early_termination": False,
            "model": {
                **MODEL_PRESETS[model],
                "lora_alpha": 256.0,
                "lora_dropout": 0.05 if not small else 0.0,
                "init_seed": 0,
            },
            "prompt": {
                "style": "brief" if small else "full",
                "history_length": 0,
                "positions": False,
            },
            # METHOD.md section 1: the paper's sampling settings.
            "sampling": {
                "temperature": 0.2,
                "top_k": 5,
                "top_p": 1.0,
                # HF's rule divides the logit of every token already seen, prompt included: the
                # tiny models' thoughts copy cells from the prompt, and the penalty flips copies.
                "repetition_penalty": 1.0 if small else 1.2,
                "max_new_tokens": 96 if small else 256,
                "eval_temperature": 0.0,
                # Not the paper's: a legal action after `"action": "` (`rollout.constraint`).
                "constrain_action": False,
            },
            # Mode `gtr` reads `gtr_valid` / `gtr_invalid` where set (None: the same values).
            "format_reward": {
                "valid": 0.0,
                "invalid": -1.0,
                "gtr_valid": None,
                "gtr_invalid": None,
            },
            "rl": _update_defaults(small, sampling_temperature=0.2),
            "train": {
                "seed": 0,
                "num_envs": 16 if small else 32,
                "turns_per_update": 8 if small else 4,
                "updates": 30 if small else 200,
                "eval_every": 10,
                "eval_episodes": 200 if small else 100,
                "checkpoint_every": 5,
                "keep_checkpoints": 3,
                "mesh": {"data": 1, "fsdp": 1},
                "tensorboard": True,
                "wandb_project": "",
                "record_episodes": 2,
            },
            "warm_start": {
                "steps": 600 if small else 0,
                "batch_size": 16,
                "learning_rate": 1e-3,
                "demos": 8192,
                "noise": 0.05,
            },
        }
    )


def _update_defaults(small: bool, sampling_temperature: float) -> dict[str, Any]:
    """UpdateConfig's paper defaults; the tiny CPU models train every parameter at a larger rate.
    PPO's log-probs are taken at the rollout's sampling temperature (the behaviour policy)."""
    defaults = {f.name: f.default for f in dataclasses.fields(UpdateConfig)}
    defaults["temperature"] = sampling_temperature
    # The cosine spans the run (`update_config`): the paper decays over all of its 25 updates.
    defaults["lr_decay_updates"] = 0
    if small:
        # The paper's 1e-5: at 1e-4 the tiny policy moved ~1 nat of KL per update (PPO clipped
        # ~40% of replies) and lost its warm start's success within 15 updates.
        defaults.update(
            learning_rate=1e-5,
            final_learning_rate=1e-6,
            minibatch_size=16,
            grad_accum_steps=2,
            ppo_epochs=2,
            snapshot_capacity=8,
            dagger_capacity=512,
        )
    return defaults


def read_run_config(run_dir: str | Path) -> ml_collections.ConfigDict:
    """The resolved config a run directory was trained with (its `config.json`; keys added since
    at their defaults, `with_new_keys`), validated."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {str(run_dir)!r} a run directory?")
    config = ml_collections.ConfigDict(_tuples(with_new_keys(json.loads(path.read_text()))))
    validate(config)
    return config


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (config values such as `env.size` are tuples)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def with_new_keys(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config (plain dicts) with the keys added since it was written, at their
    defaults (a new option's default keeps the earlier behaviour), so older runs still evaluate,
    export and resume. Keys the run has are kept as they are."""
    size = saved.get("model", {}).get("size")
    if size not in MODEL_PRESETS or not isinstance(saved.get("env"), dict):
        return saved
    defaults = base_config(saved["env"], size).to_dict()

    def fill(have: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
        out = dict(have)
        for key, value in default.items():
            if key not in out:
                out[key] = value
            elif isinstance(value, dict) and isinstance(out[key], dict):
                out[key] = fill(out[key], value)
        return out

    return fill(saved, defaults)


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`--smoke`: the same pipeline at the smallest size (CI: well under 2 minutes)."""
    config = config.copy_and_resolve_references()
    config.model.update(MODEL_PRESETS["micro"])
    config.train.update(
        num_envs=4, turns_per_update=4, updates=3, eval_every=2, eval_episodes=4,
        checkpoint_every=1, record_episodes=1,
    )  # fmt: skip
    config.rl.update(minibatch_size=4, grad_accum_steps=2, ppo_epochs=1)
    config.rl.update(dagger_capacity=32, snapshot_capacity=4)
    # 10 steps where the config warm-starts at all (an env without an expert keeps 0).
    config.warm_start.update(steps=min(config.warm_start.steps, 10), batch_size=4, demos=64)
    if config.rl.advantage == "group":  # whole groups, and episodes that end inside a rollout
        config.rl.group_size = 2
        if "max_steps_in_episode" in config.env:
            config.env.max_steps_in_episode = config.train.turns_per_update
    return config


def resolve_path(spec: str) -> tuple[Path, str | None]:
    """`configs/x.py[:arg]` or a bare env name -> (file, arg)."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not path.endswith(".py"):
        file = CONFIG_DIR / f"{path}.py"
    if not file.is_file():
        known = list(shipped_configs())
        hint = f"; the shipped configs are {', '.join(known)}" if known else ""
        raise ConfigError(f"config file {str(file)!r} not found{hint}")
    return file, (arg or None)


def env_class_reference(spec: str) -> tuple[str, str] | None:
    """`module:Class[:model]`, an env class of the user's own package -> (env name, model size);
    None for a config file or a shipped config's name (`points24`, `points24:tiny`)."""
    module, _, rest = spec.partition(":")
    if not rest or module.endswith(".py") or module in shipped_configs():
        return None
    cls, _, model = rest.partition(":")
    return f"{module}:{cls}", model or "tiny"


def env_class_config(name: str, model: str = "tiny") -> ml_collections.ConfigDict:
    """The config of an env class that has no config file: `base_config`, its `env` section every
    override `envs.make` accepts (with a plain default) at that default; no warm start when the
    env has no expert or is a Python env."""
    try:
        overrides = envs.override_defaults(name)
        agent = envs.agent_spec(name)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    config = base_config({"name": name, **overrides}, model)
    if agent.expert is None or envs.is_python_env(name):  # demonstrations need a JAX env's expert
        config.warm_start.steps = 0
    return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `configs/<env>.py[:model]` (or a bare env name), or the default config of an env
    class, `module:Class[:model]` (`env_class_config`), and applies `--config.a.b=value`s."""
    reference = env_class_reference(spec)
    config = env_class_config(*reference) if reference else _config_file(spec)
    for override in overrides:
        apply_override(config, override)
    validate(config)
    return config


def _config_file(spec: str) -> ml_collections.ConfigDict:
    file, arg = resolve_path(spec)
    module_spec = importlib.util.spec_from_file_location(f"_gtr_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # a user's config file: report it in one line
        raise ConfigError(f"config file {str(file)!r} failed to load: {err}") from err
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(file)!r} has no get_config()")
    return module.get_config(arg) if arg is not None else module.get_config()


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """`--config.rl.kl_beta=0.5` (or `rl.kl_beta=0.5`): the value is a Python literal, or a plain
    string; its type must fit the default's (an int where a float is expected is fine)."""
    text = override[len(OVERRIDE_PREFIX) :] if override.startswith(OVERRIDE_PREFIX) else override
    dotted, sep, raw = text.partition("=")
    if not sep or not dotted:
        raise ConfigError(f"override {override!r}: expected --config.KEY=VALUE")
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(_unknown(".".join(parents[: i + 1]), node))
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(_unknown(dotted, node))
    value = _parse(raw)
    default = node[leaf]
    value = _coerce(dotted, value, default)
    node[leaf] = value


def _unknown(dotted: str, node: Any) -> str:
    keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    return f"unknown config key {dotted!r}" + (f"; valid here: {', '.join(keys)}" if keys else "")


def _parse(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare word: a string (e.g. --config.rl.mode=ppo)


# UpdateConfig's optional fields: `--config.rl.value_clip_eps=None` turns the option off.
NULLABLE_KEYS = frozenset(
    f"rl.{f.name}" for f in dataclasses.fields(UpdateConfig) if str(f.type).endswith("| None")
)


def _coerce(dotted: str, value: Any, default: Any) -> Any:
    """`value` in the type of `default`, or a ConfigError naming the key."""
    if value is None and dotted in NULLABLE_KEYS:
        return None
    if default is None or isinstance(default, ml_collections.ConfigDict):
        if isinstance(default, ml_collections.ConfigDict):
            raise ConfigError(f"config key {dotted!r} is a section; set its keys one by one")
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, (tuple, list)):
        if isinstance(value, (tuple, list)):
            return tuple(value)
    elif isinstance(value, type(default)):
        return value
    kind = type(default).__name__
    article = "an" if kind[0] in "aeiou" else "a"
    raise ConfigError(
        f"config key {dotted!r} expects {article} {kind} (default {default!r}), got {value!r}"
    )


def validate(config: ml_collections.ConfigDict) -> None:
    """Cross-field checks that a type check cannot make: one ConfigError line each."""
    for section in ("env", "model", "prompt", "sampling", "format_reward", "rl", "train"):
        if section not in config:
            raise ConfigError(f"config has no {section!r} section")
    name = config.env.get("name")
    try:
        agent = envs.agent_spec(str(name))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if config.model.size not in NAMED_CONFIGS:
        raise ConfigError(
            f"config key 'model.size'={config.model.size!r}: valid: {', '.join(NAMED_CONFIGS)}"
        )
    if config.model.size.startswith("qwen") and not config.model.path:
        raise ConfigError(
            f"model size {config.model.size!r} needs a local Hugging Face directory: "
            "--config.model.path=/path/to/Qwen2.5-VL"
        )
    try:
        update_config(config)
    except ValueError as err:
        raise ConfigError(str(err).replace("UpdateConfig.", "rl.")) from None
    from gtr_turbo_jax.text.prompts import STYLES

    if config.prompt.style not in STYLES:
        raise ConfigError(
            f"config key 'prompt.style'={config.prompt.style!r}: valid: {', '.join(STYLES)}"
        )
    if config.prompt.style not in agent.texts:
        raise ConfigError(
            f"config key 'prompt.style'={config.prompt.style!r}: env {config.env.name!r} has "
            f"prompts in {', '.join(agent.texts)}"
        )
    hint = agent.positions.texts if agent.positions else {}
    if config.prompt.positions and config.prompt.style not in hint:
        raise ConfigError(
            f"config key 'prompt.positions'=True adds the env's positions hint; env "
            f"{config.env.name!r} has none in style {config.prompt.style!r} (set it False)"
        )
    if config.prompt.history_length < 0:
        raise ConfigError(
            f"config key 'prompt.history_length'={config.prompt.history_length}: need >= 0"
        )
    ws = config.get("warm_start")
    # The warm start's demonstrations and mode `gtr`'s oracle are the env's expert.
    no_expert = f"env {name!r} has no expert (AgentSpec.expert)"
    if ws is not None and ws.steps > 0 and agent.expert is None:
        raise ConfigError(f"config key 'warm_start.steps'={ws.steps}: {no_expert}; set it 0")
    if ws is not None and ws.steps > 0 and envs.is_python_env(name):
        raise ConfigError(
            f"config key 'warm_start.steps'={ws.steps}: the warm start plays the expert's "
            f"demonstrations on a JAX env; {name!r} is a Python env: set it 0 and start from a "
            "model (model.path)"
        )
    if config.rl.mode == "gtr" and agent.expert is None:
        raise ConfigError(f"config key 'rl.mode'='gtr' reads the expert's replies: {no_expert}")
    if ws is not None:
        for key, ok, need in (
            ("steps", ws.steps >= 0, "an int >= 0 (0: no warm start)"),
            ("batch_size", ws.batch_size >= 1, "an int >= 1"),
            ("demos", ws.demos >= 1, "an int >= 1"),
            ("learning_rate", ws.learning_rate > 0, "a value > 0"),
            ("noise", 0.0 <= ws.noise <= 1.0, "a value in [0, 1]"),
        ):
            if not ok:
                raise ConfigError(f"config key 'warm_start.{key}'={ws[key]!r}: need {need}")
    for key in ("gtr_valid", "gtr_invalid"):
        value = config.format_reward.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"config key 'format_reward.{key}'={value!r}: need a number or None")
    if config.rl.temperature != config.sampling.temperature:
        raise ConfigError(
            f"rl.temperature={config.rl.temperature!r} differs from sampling.temperature="
            f"{config.sampling.temperature!r}: PPO's log-probs must be the sampler's; set both"
        )
    train = config.train
    for key in ("num_envs", "turns_per_update", "updates", "eval_every", "checkpoint_every"):
        if train[key] < 1:
            raise ConfigError(f"config key 'train.{key}'={train[key]!r}: need an int >= 1")
    samples = train.num_envs * train.turns_per_update
    per_step = config.rl.minibatch_size * config.rl.grad_accum_steps
    if samples % per_step:
        raise ConfigError(
            f"train.num_envs * train.turns_per_update = {samples} samples per update is not a "
            f"multiple of rl.minibatch_size * rl.grad_accum_steps = {per_step}"
        )
    if config.rl.advantage == "group" and train.num_envs % config.rl.group_size:
        raise ConfigError(
            f"train.num_envs={train.num_envs} is not a multiple of rl.group_size="
            f"{config.rl.group_size} (rl.advantage='group' plays each level group_size times)"
        )
    devices = train.mesh.data * train.mesh.fsdp
    if train.num_envs % devices:
        raise ConfigError(
            f"train.num_envs={train.num_envs} is not a multiple of the mesh's "
            f"data * fsdp = {devices} devices"
        )


def update_config(config: ml_collections.ConfigDict) -> UpdateConfig:
    """The `rl` section as the update step's static `UpdateConfig`; `rl.lr_decay_updates=0` (the
    default) decays the learning rate over the whole run, `train.updates`."""
    rl = config.rl.to_dict()
    if rl["lr_decay_updates"] == 0:
        rl["lr_decay_updates"] = max(int(config.train.updates), 1)
    return UpdateConfig(**rl)


def env_overrides(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
    env = config.env.to_dict()
    return env.pop("name"), env


__all__ = [
    "CONFIG_DIR",
    "shipped_configs",
    "MODEL_PRESETS",
    "ConfigError",
    "apply_override",
    "base_config",
    "env_class_config",
    "env_class_reference",
    "env_overrides",
    "load_config",
    "smoke",
    "update_config",
    "validate",
]
