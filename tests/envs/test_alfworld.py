"""The ALFWorld adapter (`envs.alfworld.ALFWorld`) against a fake `alfworld` package
(`tests/envs/fake_alfworld`: ALFWorld's batched-env API over a four-receptacle kitchen):

- hand-played games: a won game's rewards (RL4VLM's `50 * won + goal-condition rate`, every
  step), an illegal command number (-1, the game does not step), five identical actions (-3,
  truncated), the step limit; the prompt fields read back as the game's text;
- seeds fix the game and leave Python's global random state alone; frames come back RGB at
  `image_size`; unknown words are written "unknown", counted and warned once;
- success is the game's `won`, not a return > 0, through the host adapter and the rollout's
  episode statistics;
- the prompt assembles inside jit as the host tokenizes it; `gtr-turbo train --env=alfworld`
  trains, evaluates and checkpoints (ALFWorld's base settings when no yaml config is given)."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from gtr_turbo_jax import cli, envs
from gtr_turbo_jax.envs.alfworld import MAX_COMMANDS, UNKNOWN, ALFWorld
from gtr_turbo_jax.envs.host import HostEnvAdapter
from gtr_turbo_jax.rollout.host import _episode_statistics
from gtr_turbo_jax.text.prompts import assemble, encode_prompt, make_template
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path

FAKE = Path(__file__).parent / "fake_alfworld"
# The fake kitchen's words: a short vocabulary keeps the tiny tokenizer's prompt short.
KITCHEN_WORDS = """you are in the middle of a room looking quickly around see and your task is to put
apple fridge cabinet countertop arrive at loc on nothing closed pick up from open it close go take
inventory look carrying happens""".split()


@pytest.fixture
def fake_alfworld(monkeypatch, tmp_path):
    """The fake package importable as `alfworld`, and a yaml config for it."""
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.delenv("ALFWORLD_CONFIG", raising=False)
    config = tmp_path / "alfworld.yaml"
    config.write_text("dagger:\n  training:\n    max_nb_steps_per_episode: 50\n")
    yield str(config)
    for name in [n for n in sys.modules if n == "alfworld" or n.startswith("alfworld.")]:
        del sys.modules[name]


def words(env: ALFWorld, ids: np.ndarray) -> str:
    return " ".join(env.vocabulary[i] for i in ids if i >= 0)


def command_index(env: ALFWorld, command: str) -> int:
    return env.commands.index(command)


def test_without_alfworld_the_env_builds_and_reset_names_what_is_missing(monkeypatch):
    if importlib.util.find_spec("alfworld") is not None:
        pytest.skip("a real alfworld is installed")
    monkeypatch.delenv("ALFWORLD_CONFIG", raising=False)
    env, params = envs.make("alfworld", image_size=28)
    assert envs.is_python_env("alfworld") and params is None
    assert env.action_names == tuple(str(i) for i in range(1, MAX_COMMANDS + 1))
    with pytest.raises(ValueError, match=r"needs ALFWorld installed \(pip install alfworld"):
        env.reset(0)


def test_without_a_config_alfworlds_base_settings_are_used(fake_alfworld, tmp_path):
    env = ALFWorld(image_size=28)
    env.reset(0)
    config = env._backend.config  # what the fake was built with: ALFWorld's keys
    assert config["env"]["type"] == "AlfredThorEnv"
    assert config["dataset"]["data_path"] == "$ALFWORLD_DATA/json_2.1.1/train"
    assert env._backend.train_eval == "train"
    held_out = ALFWorld(image_size=28, split="test")
    held_out.reset(0)
    assert held_out._backend.train_eval == "eval_out_of_distribution"


def test_a_bad_config_or_bad_arguments_are_one_line(fake_alfworld, tmp_path):
    with pytest.raises(ValueError, match="alfworld config '/nowhere.yaml'"):
        ALFWorld(config_path="/nowhere.yaml").reset(0)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="list.yaml': not a yaml mapping"):
        ALFWorld(config_path=str(tmp_path / "list.yaml")).reset(0)
    with pytest.raises(ValueError, match="split='valid': need 'train' or 'test'"):
        ALFWorld(split="valid")
    with pytest.raises(ValueError, match="image_size=0: need an int >= 1"):
        ALFWorld(image_size=0)
    with pytest.raises(ValueError, match=r"tokens_per_word=-1.0: need >= 0"):
        ALFWorld(tokens_per_word=-1.0)


def test_a_won_game_pays_rl4vlms_reward_every_step(fake_alfworld):
    env = ALFWorld(config_path=fake_alfworld, image_size=28)
    obs = env.reset(7)
    assert words(env, obs["task"]) == "put a apple in fridge ."
    assert words(env, obs["observation"]).startswith("you are in the middle of a room .")
    assert words(env, obs["commands"]).startswith("1) go to cabinet 1 2) go to cabinet 2")
    apple_at = env._backend.game.apple_at
    plan = [f"go to {apple_at}", f"take apple 1 from {apple_at}", "go to fridge 1",
            "open fridge 1", "put apple 1 in/on fridge 1"]  # fmt: skip
    rewards, ends = [], []
    for command in plan:
        obs, reward, terminated, truncated, info = env.step(command_index(env, command))
        rewards.append(reward)
        ends.append((terminated, truncated, info["success"]))
    # goal-condition rate 0, 0.5 (apple held) x 3, then 50 * won + 1.0
    assert rewards == [0.0, 0.5, 0.5, 0.5, 51.0]
    assert ends == [(False, False, False)] * 4 + [(True, False, True)]
    assert words(env, obs["observation"]) == "you put the apple 1 in / on the fridge 1 ."
    assert info["legal"] and info["unknown_words"] == 0 and info["cut_words"] == 0


def test_an_illegal_number_and_five_identical_actions(fake_alfworld):
    env = ALFWorld(config_path=fake_alfworld, image_size=28)
    env.reset(0)
    listed = len(env.commands)
    for turn in range(1, 6):
        obs, reward, terminated, truncated, info = env.step(MAX_COMMANDS - 1)  # "50": past the list
        assert not info["legal"] and env._backend.game.steps == 0  # the game did not step
        assert words(env, obs["observation"]) == "nothing happens ."
        assert len(env.commands) == listed
        assert reward == (-1.0 if turn < 5 else -4.0)  # the fifth in a row also pays -3
        assert (terminated, truncated) == (False, turn == 5)
    env.reset(0)
    look = command_index(env, "look")
    results = [env.step(look)[1:4] for _ in range(5)]
    assert results == [(0.0, False, False)] * 4 + [(-3.0, False, True)]


def test_the_step_limit_truncates(fake_alfworld):
    env = ALFWorld(config_path=fake_alfworld, image_size=28, max_steps_in_episode=3)
    env.reset(0)
    ends = [env.step(command_index(env, c))[3] for c in ("inventory", "look", "inventory")]
    assert ends == [False, False, True]


def test_seeds_fix_the_game_and_leave_the_global_random_state(fake_alfworld):
    first, second = (ALFWorld(config_path=fake_alfworld, image_size=28) for _ in range(2))
    random.seed(123)
    before = random.getstate()
    places = []
    for seed in range(12):
        first.reset(seed), second.reset(seed)
        assert first._backend.game.apple_at == second._backend.game.apple_at
        places.append(first._backend.game.apple_at)
    assert random.getstate() == before
    assert len(set(places)) > 1


def test_frames_are_rgb_at_image_size_and_the_text_env_is_black(fake_alfworld):
    env = ALFWorld(config_path=fake_alfworld, image_size=20)
    image = env.reset(0)["image"]
    assert image.shape == env.image_shape == (20, 20, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == (3, 2, 1)  # the fake's BGR pixel (1, 2, 3), flipped
    assert tuple(image[10, 10]) == (10, 20, 30)  # the colour before any "go to", as RGB
    obs = env.step(command_index(env, "go to fridge 1"))[0]
    assert tuple(obs["image"][10, 10]) == (200, 200, 0)
    text_only = ALFWorld(config_path=fake_alfworld, env_type="AlfredTWEnv", image_size=20)
    assert not text_only.reset(0)["image"].any()


def test_unknown_words_are_written_unknown_counted_and_warned(fake_alfworld, tmp_path):
    vocabulary = tmp_path / "words.txt"
    vocabulary.write_text(" ".join(w for w in KITCHEN_WORDS if w != "apple"))
    env = ALFWorld(config_path=fake_alfworld, image_size=28, vocabulary=str(vocabulary))
    with pytest.warns(UserWarning, match="'apple' is not in the prompt's vocabulary"):
        obs = env.reset(0)
    assert words(env, obs["task"]) == f"put a {UNKNOWN} in fridge ."
    info = env.step(command_index(env, "look"))[4]
    assert info["unknown_words"] >= 1


def test_success_is_won_not_a_positive_return(fake_alfworld):
    """Apple taken (0.5), then the step limit: a return > 0 that is not a win."""
    adapter = HostEnvAdapter(
        lambda: ALFWorld(config_path=fake_alfworld, image_size=28, max_steps_in_episode=2), 1
    )
    _, state = adapter.reset(jax.random.key(0))
    env = adapter.envs[0]
    apple_at = env._backend.game.apple_at
    returns, lengths = np.zeros(1, np.float32), np.zeros(1, np.int32)
    for command in (f"go to {apple_at}", f"take apple 1 from {apple_at}"):
        action = np.array([command_index(env, command)])
        _, state, reward, terminated, truncated, info = adapter.step(
            jax.random.key(1), state, action
        )
        episode, returns, lengths = _episode_statistics(
            returns, lengths, reward, terminated | truncated, info.get("success")
        )
    assert truncated[0] and episode["episode_return"][0] == 0.5
    assert info["success"].tolist() == [False] and episode["success"].tolist() == [False]
    default_rule = _episode_statistics(np.zeros(1, np.float32), lengths, reward, truncated)[0]
    assert default_rule["success"].tolist() == [True]  # what return > 0 would have said


def test_the_prompt_assembles_as_the_host_tokenizes_it(fake_alfworld):
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    env = ALFWorld(config_path=fake_alfworld, image_size=28, observation_words=40)
    template = make_template("alfworld", env, tokenizer, 4, style="brief")
    assert env._backend is None  # building the template started no game
    obs, prompts = env.reset(3), []
    for command in ("go to cabinet 1", "look", "go to fridge 1"):
        fields = {k: v for k, v in obs.items() if k != "image"}
        ids, mask = jax.device_get(assemble(template, fields))
        expected = encode_prompt(tokenizer, template, env, fields, 4)
        np.testing.assert_array_equal(ids[mask], expected)
        assert mask.sum() <= template.max_length
        prompts.append(tokenizer.decode(expected))
        obs = env.step(command_index(env, command))[0]
    assert "Task: put a apple in fridge . Scene: you are in the middle" in prompts[0]
    assert "Actions: 1) go to cabinet 1 2) go to cabinet 2" in prompts[0]
    assert "Actions: 1) go to cabinet 2" in prompts[1]  # at cabinet 1, its "go to" is gone
    # Each field's token budget (the vocabulary's mean tokens a word), not every word at the
    # longest word's count, bounds the prompt.
    unbounded = make_template("alfworld", ALFWorld(observation_words=40, tokens_per_word=1e3),
                              tokenizer, 4, style="brief")  # fmt: skip
    assert template.max_length < unbounded.max_length / 2


@pytest.mark.slow
def test_gtr_turbo_train_env_alfworld(fake_alfworld, tmp_path):
    """ALFWorld installed (the fake) and nothing else: no yaml config; the short vocabulary and
    field sizes only keep the tiny tokenizer's prompt short."""
    vocabulary = tmp_path / "words.txt"
    vocabulary.write_text(" ".join(KITCHEN_WORDS))
    run = tmp_path / "run"
    argv = ["train", "--env=alfworld", "--smoke", f"--workdir={run}", "--config.train.updates=2",
            f"--config.env.vocabulary={vocabulary}",
            "--config.env.task_words=8", "--config.env.observation_words=32",
            "--config.env.command_words=48", "--config.env.max_steps_in_episode=4"]  # fmt: skip
    assert cli.main(argv) == 0
    from alfworld.agents.environment import CREATED  # the fake's record of the games built

    # 4 training envs and one round of 4 held-out ones, each built once: no game for the
    # template or the rollout's probe, none rebuilt by the second evaluation
    assert sorted(CREATED) == ["eval_out_of_distribution"] * 4 + ["train"] * 4
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]
    evaluated = [line for line in lines if "eval/success_rate" in line]
    assert evaluated and all(0.0 <= line["eval/success_rate"] <= 1.0 for line in evaluated)
    config = json.loads((run / "config.json").read_text())
    assert config["env"]["name"] == "alfworld" and config["rl"]["thought_lambda"] == 0.2
