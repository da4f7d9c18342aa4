"""A user's env trains without touching the package: the corridor of docs/environments.md, written
into a package of its own, trains through the CLI as `--env=my_pkg.corridor:Corridor`, and its
Python twin of the same page (a `PythonEnv`) as `--env=my_pkg.corridor:PyCorridor`.

The module's source and the command are read from the page, so the page cannot drift from what
works."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from gtr_turbo_jax import cli, envs
from gtr_turbo_jax.train.logger import read_metrics

PAGE = Path(__file__).resolve().parents[1] / "docs" / "environments.md"
NAME = "my_pkg.corridor:Corridor"


def page_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", PAGE.read_text(), re.M | re.S)


@pytest.fixture
def corridor(tmp_path, monkeypatch):
    """`my_pkg.corridor` on the path, its source the page's example; forgotten afterwards."""
    blocks = page_blocks("python")
    source = next(b for b in blocks if "class Corridor(VisualEnv)" in b)
    source += next(b for b in blocks if "class PyCorridor(PythonEnv)" in b)
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "corridor.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield envs.env_class(NAME)
    for module in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:
        del sys.modules[module]


def documented_command() -> list[str]:
    (line,) = [
        line
        for block in page_blocks("text")
        for line in block.splitlines()
        if line.startswith("gtr-turbo train --env=" + NAME)
    ]
    return shlex.split(line)[1:]


def test_the_class_resolves_with_its_agent_spec_and_its_prompt_assembles(corridor):
    from gtr_turbo_jax.text.prompts import assemble, encode_prompt, make_template
    from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path

    assert corridor.__name__ == "Corridor" and envs.agent_spec(NAME).expert is None
    assert envs.override_defaults(NAME) == {
        "length": 6, "max_steps_in_episode": 12, "goal_reward": 1.0, "step_penalty": -0.1,
    }  # fmt: skip
    env, params = envs.make(NAME, length=8)
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    for style in ("full", "brief"):
        template = make_template(NAME, env, tokenizer, 8, style=style)
        for seed in range(4):  # the jitted assembly is the host tokenization of the same text
            _, state = env.reset(jax.random.key(seed), params)
            fields = jax.device_get(env.prompt_fields(state, params))
            ids, mask = assemble(template, fields)
            expected = encode_prompt(tokenizer, template, env, fields, 8)
            np.testing.assert_array_equal(np.asarray(ids)[np.asarray(mask)], expected)


# ~30 s: a whole CLI run; the corridor trains through the host rollout in the default suite
@pytest.mark.slow
def test_the_documented_command_trains_the_corridor(corridor, tmp_path):
    argv = documented_command()
    workdir = tmp_path / "run"
    smoke = ["--smoke", "--config.train.tensorboard=False"]  # no expert: no warm start
    assert cli.main([*argv, *smoke, f"--workdir={workdir}"]) == 0
    config = cli.run_config(workdir)
    assert config.env.name == NAME and config.env.length == 8  # the page's overrides
    lines = read_metrics(workdir / "metrics.jsonl")
    assert [line["step"] for line in lines if "kl_mean" in line][-1] == config.train.updates


def test_the_python_corridor_trains_through_the_host_rollout(corridor, tmp_path):
    name = NAME.replace(":Corridor", ":PyCorridor")
    assert envs.is_python_env(name) and envs.override_defaults(name) == {
        "length": 6, "max_steps_in_episode": 12,
    }  # fmt: skip
    workdir = tmp_path / "run"
    argv = ["train", f"--env={name}", "--smoke", "--config.warm_start.steps=0",
            "--config.train.tensorboard=False", "--config.env.length=8", f"--workdir={workdir}"]  # fmt: skip
    assert cli.main(argv) == 0
    lines = read_metrics(workdir / "metrics.jsonl")
    assert [line["step"] for line in lines if "kl_mean" in line][-1] == 3
    assert all(
        0.0 <= line["eval/success_rate"] <= 1.0 for line in lines if "eval/success_rate" in line
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--config.warm_start.steps=5"],
            r"'warm_start.steps'=5: env 'my_pkg.corridor:Corridor' has no expert",
        ),
        (["--mode=gtr"], r"'rl.mode'='gtr' reads the expert's replies: env .* has no expert"),
        (["--config.prompt.style=compact"], r"'prompt.style'='compact': env .* has prompts in"),
        (["--config.env.width=3"], r"unknown config key 'env.width'"),
    ],
)
def test_what_the_corridor_lacks_is_one_clear_line(corridor, flags, message, capsys):
    assert cli.main(["train", f"--env={NAME}", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


def test_a_bad_class_reference_is_one_clear_line(capsys):
    for env, message in [
        ("no_such_pkg.mod:Env", "cannot import 'no_such_pkg.mod'"),
        ("json:JSONDecoder", "json.JSONDecoder is not a VisualEnv (JAX) or PythonEnv subclass"),
    ]:
        assert cli.main(["train", f"--env={env}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
