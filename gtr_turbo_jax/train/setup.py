"""Everything static of a run, built once from the run config: tokenizer, envs (train and held-out),
prompt template, reply spec, sampling settings, the model and value head, the update config.

`build_setup(config)` makes no compiled function and touches no parameters beyond the fresh model;
the trainer, `gtr-turbo eval` and `gtr-turbo export` all start here, so they agree on every shape.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.models import (
    LoRAConfig,
    ModelConfig,
    Qwen25VL,
    ValueHead,
    from_pretrained,
    get_config,
    load_config,
)
from gtr_turbo_jax.rollout.constraint import ActionConstraint, make_action_constraint
from gtr_turbo_jax.rollout.sampler import SamplingConfig
from gtr_turbo_jax.text.image import ImageConfig, num_image_tokens
from gtr_turbo_jax.text.parse import ReplySpec, make_reply_spec
from gtr_turbo_jax.text.prompts import PromptTemplate, make_template
from gtr_turbo_jax.text.tokenizer import load_tokenizer, special_token_ids, tiny_tokenizer_path
from gtr_turbo_jax.train.config import UpdateConfig
from gtr_turbo_jax.train.run_config import ConfigError, env_overrides, update_config


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """The static pieces of one run (no parameters: those live in the `TrainState`)."""

    config: ml_collections.ConfigDict
    env_name: str
    env: VisualEnv | envs.PythonEnv  # training env (EarlyTermination-wrapped if the config says)
    env_params: Any  # None for a Python env
    eval_env: VisualEnv | envs.PythonEnv  # held-out levels (Sokoban's test bank; fresh deals)
    eval_params: Any
    tokenizer: Any
    template: PromptTemplate
    spec: ReplySpec
    image_config: ImageConfig
    sampling: SamplingConfig  # rollouts
    eval_sampling: SamplingConfig  # evaluation (greedy at eval_temperature 0)
    constraint: ActionConstraint | None  # the legal-action automaton (`sampling.constrain_action`)
    model_config: ModelConfig
    lora: LoRAConfig | None
    update: UpdateConfig
    # Python envs (`envs.PythonEnv`): makers of one training / held-out env, for the host
    # rollout's adapters (None for JAX envs).
    env_factory: Callable[[], envs.PythonEnv] | None = None
    eval_env_factory: Callable[[], envs.PythonEnv] | None = None
    # `rl.teacher_source="external"`: the teacher model's config (`rl.teacher_path`; None when
    # built for a reader of the policy, `build_setup(with_teacher=False)`).
    teacher_config: ModelConfig | None = None

    @property
    def is_python_env(self) -> bool:
        return self.env_factory is not None

    @property
    def max_steps_in_episode(self) -> int | None:
        return _max_steps(self.env, self.env_params)

    @property
    def format_reward(self) -> tuple[float, float]:
        """(valid, invalid): `format_reward.gtr_valid / gtr_invalid` in mode `gtr` where set
        (GTR's own values differ from GTR-Turbo's on Points24), else `valid / invalid`."""
        section = self.config.format_reward
        pair = (section.valid, section.invalid)
        if self.update.mode == "gtr":
            own = (section.get("gtr_valid"), section.get("gtr_invalid"))
            pair = tuple(p if o is None else o for o, p in zip(own, pair))
        return (float(pair[0]), float(pair[1]))

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be restored into this run (JSON)."""
        return {
            "model": dataclasses.asdict(self.model_config),
            "lora": dataclasses.asdict(self.lora) if self.lora else None,
            "mode": self.update.mode,
            "env": self.env_name,
            "value_widths": list(self.config.model.value_widths),
            "prompt_length": self.template.max_length,
            "reply_length": self.sampling.max_new_tokens,
        }


def _make_env(name: str, overrides: dict[str, Any], early_termination: bool):
    try:
        env, params = envs.make(name, **overrides)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"env section: {err}") from None
    if early_termination:
        if envs.is_python_env(env):
            raise ConfigError(
                "early_termination wraps a JAX env; a Python env ends its own episodes"
            )
        env = envs.EarlyTermination(env)
    return env, params


def _held_out(name: str, overrides: dict[str, Any], early_termination: bool):
    """Sokoban evaluates on its test bank; the card games deal fresh hands (an eval key stream).
    Returns `(env, params, overrides)`."""
    ctor = inspect.signature(envs.env_class(name).__init__).parameters
    if "split" in ctor:
        overrides = {**overrides, "split": "test"}
    return (*_make_env(name, overrides, early_termination), overrides)


def _max_steps(env: Any, env_params: Any) -> int | None:
    """The episode bound: a JAX env's `EnvParams` field, a Python env's attribute."""
    source = env if envs.is_python_env(env) else env_params
    steps = getattr(source, "max_steps_in_episode", None)
    return None if steps is None else int(steps)


def _python_env(name: str, overrides: dict[str, Any]) -> envs.PythonEnv:
    return envs.make(name, **overrides)[0]


def build_setup(config: ml_collections.ConfigDict, with_teacher: bool = True) -> RunSetup:
    """The static pieces of the run `config` describes (one ConfigError line on bad input).
    Without `with_teacher` an external teacher is not looked at (readers of the policy)."""
    name, overrides = env_overrides(config)
    env, env_params = _make_env(name, overrides, config.early_termination)
    eval_env, eval_params, eval_overrides = _held_out(name, overrides, config.early_termination)
    python_env = envs.is_python_env(env)
    max_steps = _max_steps(env, env_params)
    turns = config.train.turns_per_update
    if config.rl.advantage == "group" and (max_steps is None or turns < max_steps):
        raise ConfigError(
            f"rl.advantage='group' needs every episode to end inside one rollout: "
            f"train.turns_per_update={turns} < the env's max_steps_in_episode={max_steps}"
        )

    path = config.model.path
    if path:
        if not Path(path).is_dir():
            raise ConfigError(f"model.path={path!r} is not a directory")
        try:
            model_config = load_config(path, dtype=config.model.dtype)
            tokenizer = load_tokenizer(path)
            image_config = ImageConfig.from_pretrained(path)
        except (ValueError, FileNotFoundError, OSError) as err:
            raise ConfigError(f"model.path={path!r}: {err}") from None
    else:
        model_config = get_config(config.model.size, dtype=config.model.dtype)
        tokenizer = load_tokenizer(tiny_tokenizer_path())
        image_config = ImageConfig()
    if model_config.text.vocab_size < len(tokenizer):
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} ids, more than the model's vocab_size="
            f"{model_config.text.vocab_size}"
        )
    lora = None
    if config.model.lora_rank > 0:
        lora = LoRAConfig(
            rank=config.model.lora_rank,
            alpha=float(config.model.lora_alpha),
            dropout=float(config.model.lora_dropout),
        )

    height, width, _ = env.image_shape
    image_tokens = num_image_tokens(height, width, image_config)
    template = make_template(
        name,
        env,
        tokenizer,
        image_tokens,
        history_length=config.prompt.history_length,
        style=config.prompt.style,
        positions=config.prompt.positions,
    )
    spec = make_reply_spec(tokenizer, env.action_names)
    # `sampling.constrain_action`: once a reply writes `"action": "`, only a legal action can follow
    # (rollouts and evaluation; PPO's log-probs stay the model's own, as with top-k).
    constraint = (
        make_action_constraint(tokenizer, env.action_names, vocab_size=model_config.text.vocab_size)
        if config.sampling.constrain_action
        else None
    )
    special = special_token_ids(tokenizer)
    sampling_args = dict(
        max_new_tokens=config.sampling.max_new_tokens,
        top_k=config.sampling.top_k,
        top_p=config.sampling.top_p,
        repetition_penalty=config.sampling.repetition_penalty,
        eos_ids=(special.im_end,),
        pad_id=special.pad,
    )
    try:
        sampling = SamplingConfig(temperature=config.sampling.temperature, **sampling_args)
        eval_temperature = config.sampling.eval_temperature
        eval_sampling = SamplingConfig(
            temperature=eval_temperature if eval_temperature > 0 else 1.0,
            greedy=eval_temperature <= 0,
            **sampling_args,
        )
    except ValueError as err:
        raise ConfigError(f"sampling section: {err}") from None
    update = update_config(config)
    teacher_config = None
    if update.external_teacher and with_teacher:
        teacher_config = _teacher_config(
            update.teacher_path, config.model.dtype, model_config, tokenizer
        )
    return RunSetup(
        config=config,
        env_name=name,
        env=env,
        env_params=env_params,
        eval_env=eval_env,
        eval_params=eval_params,
        tokenizer=tokenizer,
        template=template,
        spec=spec,
        image_config=image_config,
        sampling=sampling,
        eval_sampling=eval_sampling,
        constraint=constraint,
        model_config=model_config,
        lora=lora,
        update=update,
        teacher_config=teacher_config,
        env_factory=functools.partial(_python_env, name, overrides) if python_env else None,
        eval_env_factory=(
            functools.partial(_python_env, name, eval_overrides) if python_env else None
        ),
    )


def _teacher_config(path: str, dtype: str, policy: ModelConfig, tokenizer: Any) -> ModelConfig:
    """The external teacher's config, checked against the policy's: it must read the same token
    ids (its tokenizer, where the directory has one, is the policy's) and the same image patches."""
    where = f"rl.teacher_path={path!r}"
    if not Path(path).is_dir():
        raise ConfigError(f"{where} is not a directory")
    try:
        teacher = load_config(path, dtype=dtype)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise ConfigError(f"{where}: {err}") from None
    if teacher.text.vocab_size < len(tokenizer):
        raise ConfigError(
            f"{where}: the teacher's vocab_size={teacher.text.vocab_size} is smaller than the "
            f"policy's tokenizer ({len(tokenizer)} ids)"
        )
    if any(Path(path, name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        try:
            same = load_tokenizer(path).get_vocab() == tokenizer.get_vocab()
        except (ValueError, OSError) as err:
            raise ConfigError(f"{where}: its tokenizer does not load: {err}") from None
        if not same:
            raise ConfigError(
                f"{where}: its tokenizer is not the policy's (a different vocabulary)"
            )
    for field in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
        if getattr(teacher, field) != getattr(policy, field):
            raise ConfigError(
                f"{where}: {field}={getattr(teacher, field)}, the policy's is {getattr(policy, field)}"
            )
    for field in ("in_channels", "patch_size", "temporal_patch_size", "spatial_merge_size"):
        if getattr(teacher.vision, field) != getattr(policy.vision, field):
            raise ConfigError(
                f"{where}: vision {field}={getattr(teacher.vision, field)}, the policy's is "
                f"{getattr(policy.vision, field)} (both read the same image patches)"
            )
    return teacher


def build_teacher(setup: RunSetup, abstract: bool = False) -> Qwen25VL | None:
    """The external teacher (`rl.teacher_source="external"`), loaded without LoRA, or its
    `abstract` form (shapes only, nothing read or allocated); None for the other teachers."""
    if setup.teacher_config is None:
        return None
    if abstract:
        return nnx.eval_shape(lambda: Qwen25VL(setup.teacher_config, rngs=nnx.Rngs(0)))
    return from_pretrained(setup.update.teacher_path, setup.config.model.dtype)


def build_model(setup: RunSetup) -> tuple[Qwen25VL, ValueHead]:
    """The policy model (loaded from `model.path`, or randomly initialised) and a fresh value head."""
    config = setup.config
    seed = config.model.init_seed
    if config.model.path:
        model = from_pretrained(config.model.path, config.model.dtype, lora=setup.lora, seed=seed)
    else:
        model = Qwen25VL(setup.model_config, lora=setup.lora, rngs=nnx.Rngs(seed))
    value_head = ValueHead(
        setup.model_config.text.hidden_size,
        widths=tuple(config.model.value_widths),
        rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(seed), 1)),
    )
    return model, value_head


__all__ = ["RunSetup", "build_model", "build_setup", "build_teacher"]
