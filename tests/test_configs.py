"""Every file in configs/ loads, names a buildable env with valid overrides, a named model, and
update settings that `UpdateConfig` accepts."""

import importlib.util
from pathlib import Path

import pytest

from gtr_turbo_jax.envs import make
from gtr_turbo_jax.models import NAMED_CONFIGS
from gtr_turbo_jax.train import UpdateConfig

CONFIG_FILES = sorted((Path(__file__).parents[1] / "configs").glob("*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_there_is_one_config_per_env():
    assert {p.stem for p in CONFIG_FILES} >= {
        "sokoban",
        "points24",
        "ezpoints",
        "numberline",
        "blackjack",
    }


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_builds_its_env_and_update(path):
    config = load(path)
    env_args = dict(config.env)
    name = env_args.pop("name")
    assert name == path.stem
    env, params = make(name, **env_args)
    assert env.num_actions >= 2
    assert config.model in NAMED_CONFIGS
    update = UpdateConfig(**config.rl)
    assert update.mode in ("ppo", "gtr", "turbo_sft", "turbo_kl")
    assert 0.0 < config.sampling.temperature and config.sampling.max_new_tokens > 0


def test_a_bad_update_value_is_one_clear_error():
    config = load(CONFIG_FILES[0])
    with pytest.raises(ValueError, match="gamma=1.5 is out of range"):
        UpdateConfig(**{**config.rl, "gamma": 1.5})
