"""A Python env trains through the trainer (the host rollout): Sokoban's pure-Python twin
(`PySokoban`, an `envs.PythonEnv` with Sokoban's constructor and agent spec) against the JAX
Sokoban under the same config and seed.

- the first rollout batch of both learners is the same, field by field (same levels: the host
  adapter seeds env i with the bits of the key JAX env i gets), with group rollouts as the tiny
  default plays them (4 envs in 2 groups replaying one level each);
- `gtr-turbo train --env=...:PySokoban` trains, evaluates on held-out levels, checkpoints, resumes
  (a fresh start of the envs from the saved key) and exports, as for a JAX env."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from gtr_turbo_jax import cli, envs
from gtr_turbo_jax.train.learner import Learner
from gtr_turbo_jax.train.run_config import load_config, smoke

TWIN = "gtr_turbo_jax.envs.sokoban.python_env:PySokoban"


def configs():
    """The smoke Sokoban config, and the same with the twin as its env."""
    compiled = smoke(load_config("sokoban"))
    twin = compiled.copy_and_resolve_references()
    twin.env.name = TWIN
    return compiled, twin


def test_the_twin_is_a_python_env_with_sokobans_config_section():
    compiled, _ = configs()
    assert envs.is_python_env(TWIN) and not envs.is_python_env("sokoban")
    overrides = {k: v for k, v in compiled.env.to_dict().items() if k != "name"}
    env, params = envs.make(TWIN, **overrides)
    assert params is None and env.max_steps_in_episode == overrides["max_steps_in_episode"]
    assert env.image_shape == envs.make("sokoban", **overrides)[0].image_shape
    with pytest.raises(ValueError, match=r"unknown override\(s\) levels for env"):
        envs.make(TWIN, levels=3)


# ~20 s: two learners built and played
@pytest.mark.slow
def test_same_seed_same_first_batch_as_the_jax_env():
    compiled_config, twin_config = configs()
    assert compiled_config.rl.advantage == "group" and compiled_config.rl.group_size == 2
    batches = []
    for config in (compiled_config, twin_config):
        learner = Learner(config)
        state = learner.init_state()
        rollout_state = learner.init_rollout()
        for _ in range(2):  # the second call restarts the groups on new levels
            rollout_state, batch, episodes = learner.rollout.run(
                rollout_state, state.base, state.policy, state.value_head,
                config.train.turns_per_update,
            )  # fmt: skip
            batches.append((jax.device_get(batch), jax.device_get(episodes)))
    (jax_first, jax_second), (twin_first, twin_second) = batches[:2], batches[2:]
    for (jax_batch, jax_episodes), (twin_batch, twin_episodes) in (
        (jax_first, twin_first),
        (jax_second, twin_second),
    ):
        for name, got in vars(twin_batch).items():
            np.testing.assert_array_equal(got, getattr(jax_batch, name), err_msg=name)
        for name in ("returned_episode", "success", "episode_return"):
            np.testing.assert_array_equal(twin_episodes[name], jax_episodes[name], err_msg=name)
    grids = np.asarray(jax_first[1]["fields"]["grid"])[0]  # turn 0: [envs, rows, cols]
    assert (grids[0] == grids[1]).all() and (grids[2] == grids[3]).all()  # one level per group
    assert not (np.asarray(jax_first[0].prompt_ids) == np.asarray(jax_second[0].prompt_ids)).all()


# ~50 s of CLI runs: the Python-env rollout itself is tested in the default suite
@pytest.mark.slow
def test_the_cli_trains_evaluates_resumes_and_exports_the_twin(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", f"--env={TWIN}", "--smoke", f"--workdir={run}", "--config.train.updates=2",
            "--config.warm_start.steps=0", "--config.env.tile_size=14",
            "--config.env.max_steps_in_episode=4"]  # fmt: skip
    assert cli.main(argv) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert "eval/success_rate" in lines[0] and "eval/success_rate" in lines[-1]
    assert all(np.isfinite(line["loss"]) for line in lines[1:])
    assert json.loads((run / "summary.json").read_text())["env"] == TWIN
    # Resumed to 3 updates: continues from checkpoint 2 (its envs start afresh).
    config = json.loads((run / "config.json").read_text())
    config["train"]["updates"] = 3
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert cli.main(["train", "--resume", f"--workdir={run}"]) == 0
    assert "resumed from" in capsys.readouterr().err
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    assert cli.main(["export", str(run), str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "config.json").is_file()


def test_a_warm_start_on_a_python_env_is_one_clear_line(capsys):
    argv = ["train", f"--env={TWIN}", "--smoke", "--config.warm_start.steps=5"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a Python env: set it 0 and start from a model" in err[0], err
