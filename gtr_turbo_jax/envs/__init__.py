"""Pure-JAX environments on the gymnax 1.0 contract.

`make(name, **overrides) -> (env, params)` builds one by name: a shipped env's (`ENVS`) or
`"module:Class"`, an env class of the user's own package (gymnax / Gymnasium's entry-point form).
An override is either a constructor argument of the env (static: shapes, sizes, options) or a field
of its `EnvParams` (values that may change without recompiling: rewards, step limits). The envs are also registered with gymnax, so
`gymnax.make("Sokoban-gtr")` works (constructor arguments only there).

`agent_spec(name_or_env)` is what the agent must know of an env (`envs.agent.AgentSpec`: prompt
wording, reply format, expert, grounding), which every env class carries.

`module:Class` may also name a Python env (`envs.host.PythonEnv`: any simulator that cannot run
inside jit; `PYTHON_ENVS` names the shipped one, `alfworld`): `make` builds it from its constructor
arguments (no `EnvParams`), and the trainer drives it through the host rollout (`is_python_env`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from typing import Any

import gymnax.registration

from gtr_turbo_jax.envs.agent import AgentSpec
from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.envs.host import PythonEnv
from gtr_turbo_jax.envs.wrappers import EarlyTermination, EpisodeStatistics, StepWrapper

# name -> (module, class, gymnax id). Imported lazily: building one env never imports the others.
ENVS: dict[str, tuple[str, str, str]] = {
    "sokoban": ("gtr_turbo_jax.envs.sokoban", "Sokoban", "Sokoban-gtr"),
    "points24": ("gtr_turbo_jax.envs.cards", "Points24", "Points24-gtr"),
    "ezpoints": ("gtr_turbo_jax.envs.cards", "EZPoints", "EZPoints-gtr"),
    "numberline": ("gtr_turbo_jax.envs.cards", "NumberLine", "NumberLine-gtr"),
    "blackjack": ("gtr_turbo_jax.envs.cards", "Blackjack", "Blackjack-gtr"),
}
# Python envs (`PythonEnv`, driven through the host rollout) by name: name -> (module, class).
PYTHON_ENVS: dict[str, tuple[str, str]] = {
    "alfworld": ("gtr_turbo_jax.envs.alfworld", "ALFWorld"),
}
DEFAULT_ENV = "sokoban"  # the command line's `--env` when none is given


def env_class(name: str) -> type[VisualEnv] | type[PythonEnv]:
    """The class of a shipped env's name (`ENVS`, `PYTHON_ENVS`), or of `"module:Class"`
    (imported here): a `VisualEnv` (JAX) or a `PythonEnv` subclass."""
    if name in ENVS:
        module, cls, _ = ENVS[name]
    elif name in PYTHON_ENVS:
        module, cls = PYTHON_ENVS[name]
    else:
        module, _, cls = name.partition(":")
        if not module or not cls:
            raise ValueError(
                f"unknown env {name!r}; valid names: {', '.join([*ENVS, *PYTHON_ENVS])}, or "
                "module:Class of your own"
            )
    try:
        found = getattr(importlib.import_module(module), cls, None)
    except ImportError as err:
        raise ValueError(f"env {name!r}: cannot import {module!r}: {err}") from None
    if found is None:
        raise ValueError(f"env {name!r}: module {module!r} has no {cls!r}")
    if not (isinstance(found, type) and issubclass(found, (VisualEnv, PythonEnv))):
        raise ValueError(
            f"env {name!r}: {module}.{cls} is not a VisualEnv (JAX) or PythonEnv subclass"
        )
    return found


def is_python_env(env: str | Any) -> bool:
    """Whether `env` (a name, an env or an env class) is a Python env (`PythonEnv`)."""
    cls = env_class(env) if isinstance(env, str) else env if isinstance(env, type) else type(env)
    return issubclass(cls, PythonEnv)


def make(name: str, **overrides: Any) -> tuple[VisualEnv | PythonEnv, Any]:
    """Build env `name` with `overrides` split between constructor arguments and `EnvParams` (a
    Python env: constructor arguments only, and `None` for the params)."""
    cls = env_class(name)
    ctor_keys = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    ctor_args = {k: v for k, v in overrides.items() if k in ctor_keys}
    if issubclass(cls, PythonEnv):
        unknown = sorted(set(overrides) - set(ctor_keys))
        if unknown:
            raise ValueError(
                f"unknown override(s) {', '.join(unknown)} for env {name!r}; valid: "
                f"{', '.join(ctor_keys)}"
            )
        return cls(**ctor_args), None
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


def override_defaults(name: str) -> dict[str, Any]:
    """The overrides `make(name, ...)` accepts that have a plain default (a number, a string, a
    bool or a tuple of those), with that default: constructor arguments, then `EnvParams` fields.
    What a config's `env` section lists when no config file does (a user's env class)."""

    def plain(value: Any) -> bool:
        if isinstance(value, tuple):
            return all(map(plain, value))
        return isinstance(value, (bool, int, float, str))

    cls = env_class(name)
    ctor = inspect.signature(cls.__init__).parameters
    found = {k: p.default for k, p in ctor.items() if k != "self" and plain(p.default)}
    if issubclass(cls, PythonEnv):
        return found
    params = cls().default_params
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if f.name not in found and plain(value):
            found[f.name] = value
    return found


@functools.cache
def default_env(name: str) -> VisualEnv | PythonEnv:
    """The env `name` with no overrides, built once: the constants (action names, symbols, target)
    its expert and grounding grammar read."""
    return make(name)[0]


def agent_spec(env: str | VisualEnv | type[VisualEnv]) -> AgentSpec:
    """What the agent must know of `env` (a name, an env or an env class)."""
    spec = env_class(env).agent_spec if isinstance(env, str) else env.agent_spec
    if spec is None:
        raise ValueError(
            f"env {env!r} has no agent spec: set `agent_spec = envs.agent.AgentSpec(...)` on its "
            "class (the prompt text and reply format)"
        )
    return spec


def _register_with_gymnax() -> None:
    for name, (_, _, gymnax_id) in ENVS.items():
        if gymnax_id not in gymnax.registration.registered_envs:
            gymnax.registration.register(gymnax_id, lambda _n=name, **kw: env_class(_n)(**kw))


_register_with_gymnax()

__all__ = [
    "DEFAULT_ENV",
    "ENVS",
    "AgentSpec",
    "EarlyTermination",
    "PYTHON_ENVS",
    "PythonEnv",
    "EpisodeStatistics",
    "StepWrapper",
    "VisualEnv",
    "agent_spec",
    "default_env",
    "env_class",
    "is_python_env",
    "make",
    "override_defaults",
]
