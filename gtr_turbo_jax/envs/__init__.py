"""Pure-JAX environments on the gymnax 1.0 contract.

`make(name, **overrides) -> (env, params)` builds one by name. An override is either a constructor
argument of the env (static: shapes, sizes, options) or a field of its `EnvParams` (values that may
change without recompiling: rewards, step limits). The envs are also registered with gymnax, so
`gymnax.make("Sokoban-gtr")` works (constructor arguments only there).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

import gymnax.registration

from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.envs.wrappers import EarlyTermination, EpisodeStatistics, StepWrapper

# name -> (module, class, gymnax id). Imported lazily: building one env never imports the others.
ENVS: dict[str, tuple[str, str, str]] = {
    "sokoban": ("gtr_turbo_jax.envs.sokoban", "Sokoban", "Sokoban-gtr"),
    "points24": ("gtr_turbo_jax.envs.cards", "Points24", "Points24-gtr"),
    "ezpoints": ("gtr_turbo_jax.envs.cards", "EZPoints", "EZPoints-gtr"),
    "numberline": ("gtr_turbo_jax.envs.cards", "NumberLine", "NumberLine-gtr"),
    "blackjack": ("gtr_turbo_jax.envs.cards", "Blackjack", "Blackjack-gtr"),
}


def env_class(name: str) -> type[VisualEnv]:
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; valid names: {', '.join(ENVS)}")
    module, cls, _ = ENVS[name]
    return getattr(importlib.import_module(module), cls)


def make(name: str, **overrides: Any) -> tuple[VisualEnv, Any]:
    """Build env `name` with `overrides` split between constructor arguments and `EnvParams`."""
    cls = env_class(name)
    ctor_keys = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    ctor_args = {k: v for k, v in overrides.items() if k in ctor_keys}
    env = cls(**ctor_args)
    params = env.default_params
    param_keys = [f.name for f in dataclasses.fields(params)]
    unknown = sorted(set(overrides) - set(ctor_keys) - set(param_keys))
    if unknown:
        valid = ", ".join(sorted(set(ctor_keys) | set(param_keys)))
        raise ValueError(
            f"unknown override(s) {', '.join(unknown)} for env {name!r}; valid: {valid}"
        )
    param_args = {k: v for k, v in overrides.items() if k in param_keys and k not in ctor_keys}
    return env, params.replace(**param_args)


def _register_with_gymnax() -> None:
    for name, (_, _, gymnax_id) in ENVS.items():
        if gymnax_id not in gymnax.registration.registered_envs:
            gymnax.registration.register(gymnax_id, lambda _n=name, **kw: env_class(_n)(**kw))


_register_with_gymnax()

__all__ = [
    "ENVS",
    "EarlyTermination",
    "EpisodeStatistics",
    "StepWrapper",
    "VisualEnv",
    "env_class",
    "make",
]
