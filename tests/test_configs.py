"""Every file in configs/ loads through the CLI's loader, names a buildable env, a named model and
update settings that `UpdateConfig` accepts; overrides are type-checked with one-line errors."""

from pathlib import Path

import pytest

from gtr_turbo_jax.envs import make
from gtr_turbo_jax.models import NAMED_CONFIGS
from gtr_turbo_jax.train.run_config import (
    CONFIG_DIR,
    MODEL_PRESETS,
    ConfigError,
    env_overrides,
    load_config,
    shipped_configs,
    smoke,
    update_config,
    validate,
)

CONFIG_FILES = list(shipped_configs().values())
ENVS = ("sokoban", "points24", "ezpoints", "numberline", "blackjack")


def test_there_is_one_config_per_env():
    assert CONFIG_DIR == Path(__file__).parents[1] / "configs"
    assert {p.stem for p in CONFIG_FILES} >= set(ENVS)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_builds_its_env_and_update(path):
    config = load_config(str(path))
    name, overrides = env_overrides(config)
    assert name == path.stem
    env, _ = make(name, **overrides)
    assert len(env.action_names) >= 2
    assert config.model.size in NAMED_CONFIGS
    update = update_config(config)
    assert update.mode == "turbo_kl"  # the product's default
    assert 0.0 < config.sampling.temperature and config.sampling.max_new_tokens > 0
    samples = config.train.num_envs * config.train.turns_per_update
    assert samples % update.samples_per_step == 0
    validate(smoke(config))


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("size", ["tiny", "qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_the_learning_rate_decays_over_the_whole_run(env, size):
    """No preset trains most of its run at the final rate (the paper decays over all of it);
    an explicit `rl.lr_decay_updates` still wins."""
    path = ["--config.model.path=/models/qwen"] if size != "tiny" else []
    config = load_config(f"{env}:{size}", path)
    assert update_config(config).lr_decay_updates == config.train.updates
    longer = load_config(f"{env}:{size}", [*path, "--config.train.updates=7"])
    assert update_config(longer).lr_decay_updates == 7
    fixed = load_config(f"{env}:{size}", [*path, "--config.rl.lr_decay_updates=25"])
    assert update_config(fixed).lr_decay_updates == 25


@pytest.mark.parametrize("size", [s for s in MODEL_PRESETS if s.startswith("qwen")])
def test_real_model_sizes_need_a_local_directory(size):
    with pytest.raises(ConfigError, match="needs a local Hugging Face directory"):
        load_config(f"points24:{size}")
    config = load_config(f"points24:{size}", ["--config.model.path=/models/qwen"])
    assert config.model.lora_rank > 0 and config.prompt.style == "full"


def test_overrides_are_typed_and_unknown_keys_named():
    config = load_config("sokoban", ["--config.rl.kl_beta=0.5", "--config.rl.mode=ppo"])
    assert config.rl.kl_beta == 0.5 and config.rl.mode == "ppo"
    assert load_config("sokoban", ["--config.rl.kl_beta=2"]).rl.kl_beta == 2.0  # int -> float
    with pytest.raises(ConfigError, match="unknown config key 'rl.kl_coef'; valid here: .*kl_beta"):
        load_config("sokoban", ["--config.rl.kl_coef=0.5"])
    with pytest.raises(ConfigError, match="unknown config key 'optim'"):
        load_config("sokoban", ["--config.optim.lr=0.5"])
    with pytest.raises(ConfigError, match="'train.num_envs' expects an int .*got 'many'"):
        load_config("sokoban", ["--config.train.num_envs=many"])
    with pytest.raises(ConfigError, match="expected --config.KEY=VALUE"):
        load_config("sokoban", ["--config.rl.kl_beta"])


def test_optional_options_turn_off_with_none_and_others_refuse_it():
    config = load_config("sokoban", ["--config.rl.value_clip_eps=None"])
    assert config.rl.value_clip_eps is None
    assert load_config("sokoban", ["--config.rl.ratio_guard=5"]).rl.ratio_guard == 5.0
    with pytest.raises(ConfigError, match="'rl.clip_eps' expects a float .*got None"):
        load_config("sokoban", ["--config.rl.clip_eps=None"])
    with pytest.raises(ConfigError, match=r"rl.ratio_guard=0.5 is out of range"):
        load_config("sokoban", ["--config.rl.ratio_guard=0.5"])


def test_bad_values_and_files_are_one_clear_line():
    with pytest.raises(ConfigError, match=r"rl.gamma=1.5 is out of range"):
        load_config("sokoban", ["--config.rl.gamma=1.5"])
    with pytest.raises(ConfigError, match="not a multiple of rl.minibatch_size"):
        load_config("sokoban", ["--config.train.num_envs=3"])
    with pytest.raises(ConfigError, match="config file .*chess.py.* not found; the shipped"):
        load_config("chess")
    with pytest.raises(ConfigError, match="unknown env 'chess'"):
        load_config("sokoban", ["--config.env.name=chess"])
    with pytest.raises(ConfigError, match="'prompt.positions'=True adds the env's positions hint"):
        load_config("numberline", ["--config.prompt.positions=True"])


def test_tiny_sokoban_lists_the_cells_and_real_models_read_the_grid():
    assert load_config("sokoban").prompt.positions is True
    real = load_config("sokoban:qwen2.5-vl-3b", ["--config.model.path=/models/qwen"])
    assert real.prompt.positions is False


@pytest.mark.parametrize(
    ("env", "mode", "expected"),
    [
        ("points24", "gtr", (5.0, 0.0)),  # GTR's own format reward
        ("points24", "turbo_kl", (3.0, -2.0)),  # GTR-Turbo's
        ("points24", "turbo_sft", (3.0, -2.0)),
        ("sokoban", "gtr", (0.0, -1.0)),  # no GTR value of its own: the env's
    ],
)
def test_gtr_reads_its_own_format_reward(env, mode, expected):
    from gtr_turbo_jax.train.setup import build_setup

    setup = build_setup(load_config(env, [f"--config.rl.mode={mode}"]))
    assert setup.format_reward == expected
    explicit = load_config(env, [f"--config.rl.mode={mode}", "--config.format_reward.gtr_valid=4"])
    assert build_setup(explicit).format_reward[0] == (4.0 if mode == "gtr" else expected[0])
    with pytest.raises(ConfigError, match=r"'format_reward.gtr_invalid'.*'x'"):
        load_config(env, ["--config.format_reward.gtr_invalid=x"])


def test_group_advantages_need_whole_groups_and_whole_episodes():
    from gtr_turbo_jax.train.setup import build_setup

    group = ["--config.rl.advantage=group", "--config.train.turns_per_update=12"]
    build_setup(load_config("sokoban", group))  # 32 envs in groups of 4, episodes of <= 12 turns
    with pytest.raises(ConfigError, match=r"num_envs=32 is not a multiple of rl.group_size=3"):
        load_config("sokoban", [*group, "--config.rl.group_size=3"])
    short = load_config("sokoban", [group[0], "--config.train.turns_per_update=8"])
    with pytest.raises(
        ConfigError, match=r"turns_per_update=8 < the env's max_steps_in_episode=12"
    ):
        build_setup(short)


@pytest.mark.parametrize(
    ("env", "steps"), [("points24", 1024), ("numberline", 512), ("blackjack", 512)]
)
@pytest.mark.parametrize("size", ["qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_real_presets_collect_the_papers_env_steps_per_update(env, steps, size):
    config = load_config(f"{env}:{size}", ["--config.model.path=/models/qwen"])
    assert config.train.num_envs * config.train.turns_per_update == steps
    assert update_config(config).samples_per_step == 128  # accumulated over micro-batches


def test_a_saved_run_config_gets_the_keys_added_since_at_their_defaults():
    from gtr_turbo_jax.train.run_config import with_new_keys

    saved = load_config("sokoban", ["--config.rl.kl_beta=0.5"]).to_dict()
    del saved["rl"]["advantage"], saved["format_reward"]["gtr_valid"]
    filled = with_new_keys(saved)
    assert filled["rl"]["advantage"] == "gae" and filled["format_reward"]["gtr_valid"] is None
    assert filled["rl"]["kl_beta"] == 0.5  # the run's own values are kept
    assert filled["sampling"]["temperature"] == saved["sampling"]["temperature"] == 1.0
    assert "advantage" not in saved["rl"]  # the input is not changed


def test_smoke_warm_starts_only_where_the_config_does():
    """`--smoke` cuts the warm start to 10 steps, and keeps an env without one (no expert, a
    preset that starts from its model) at 0: asking for a warm start there is an error."""
    assert smoke(load_config("sokoban")).warm_start.steps == 10
    preset = load_config("sokoban:qwen2.5-vl-3b", ["--config.model.path=/models/qwen"])
    assert preset.warm_start.steps == 0 and smoke(preset).warm_start.steps == 0
