"""`gtr-turbo train` with a fixed external teacher (`--config.rl.teacher_source=external
--config.rl.teacher_path=DIR`, On-Policy Distillation's teacher): trains on the smoke setting, keeps
the teacher out of its checkpoints (a resume loads it again and redoes a lost update bitwise),
evaluates without it, and refuses a teacher that does not fit the policy in one line."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from test_cli import SMOKE, assert_one_line, checkpoint_steps, run_cli

from gtr_turbo_jax.models import from_pretrained, get_config
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.train.commands import restore_run
from gtr_turbo_jax.train.logger import read_metrics

MICRO = get_config("micro")  # the smoke setting's policy
TEACHER = MICRO.replace(
    text=dataclasses.replace(MICRO.text, hidden_size=64, intermediate_size=128,
                             num_attention_heads=4, num_key_value_heads=2),
    vision=dataclasses.replace(MICRO.vision, out_hidden_size=64),
)  # fmt: skip


def external(path) -> list[str]:
    return ["--config.rl.teacher_source=external", f"--config.rl.teacher_path={path}"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("teacher") / "model", TEACHER, 5)


@pytest.fixture(scope="module")
def run(tmp_path_factory, teacher_dir):
    workdir = tmp_path_factory.mktemp("external") / "run"
    argv = ["train", "--env=sokoban", f"--workdir={workdir}", *SMOKE, *external(teacher_dir)]
    assert run_cli(*argv) == 0
    return workdir


# a whole CLI run with a second model (~30 s); the update with an external teacher is tested in tests/train
@pytest.mark.slow
def test_training_reads_the_kl_to_the_external_teacher(run, teacher_dir):
    config = json.loads((run / "config.json").read_text())
    assert config["rl"]["teacher_source"] == "external"
    updates = read_metrics(run)[1:]  # (the smoke policy's replies do not parse: the KL's value
    assert updates and all("kl_mean" in line for line in updates)  # is checked elsewhere)
    assert not any("teacher_policy_distance" in line for line in updates)
    _, state, _ = restore_run(run, with_teacher=True)
    expected = jax.tree.leaves(jax.tree.map(np.asarray, from_pretrained(teacher_dir)))
    got = jax.tree.leaves(jax.tree.map(np.asarray, state.teacher))
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_checkpoints_leave_the_teacher_out_and_resume_bitwise(run, tmp_path):
    _, state, _ = restore_run(run)  # readers of the policy do not load the teacher
    assert not state.teacher
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    steps = checkpoint_steps(copy)
    shutil.rmtree(copy / "checkpoints" / str(steps[-1]))
    assert run_cli("train", f"--workdir={copy}", "--resume") == 0
    for name in ("policy", "value_head"):
        for a, b in zip(*(jax.tree.leaves(getattr(restore_run(d)[1], name)) for d in (run, copy))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert read_metrics(copy)[-1]["kl_mean"] == read_metrics(run)[-1]["kl_mean"]


# reads the CLI run above
@pytest.mark.slow
def test_eval_does_not_need_the_teacher(run, teacher_dir, tmp_path):
    moved = tmp_path / "gone"
    shutil.move(teacher_dir, moved)
    try:
        assert run_cli("eval", run, "--episodes=2") == 0
    finally:
        shutil.move(moved, teacher_dir)


@pytest.mark.parametrize(
    "change, message",
    [
        ({}, None),
        ({"image_token_id": 5}, "image_token_id=5, the policy's is 6"),
        ({"patch_size": 7}, "vision patch_size=7, the policy's is 14"),
    ],
)
def test_a_teacher_that_does_not_fit_is_one_clear_line(change, message, tmp_path, capsys):
    if message is None:  # the option's own checks
        for argv, text in (
            (["--config.rl.teacher_path=/models/t"], "teacher_path names the model of"),
            (external(tmp_path / "none"), "rl.teacher_path=.*none' is not a directory"),
            ([*external(tmp_path), "--mode=turbo_sft"], "mode='turbo_sft' is not supported"),
        ):
            assert_one_line(run_cli("train", *SMOKE, *argv), text, capsys)
        return
    vision = {k: v for k, v in change.items() if hasattr(MICRO.vision, k)}
    top = {k: v for k, v in change.items() if k not in vision}
    config = TEACHER.replace(vision=dataclasses.replace(TEACHER.vision, **vision), **top)
    path = write_random_checkpoint(tmp_path / "bad", config, 1)
    assert_one_line(run_cli("train", *SMOKE, *external(path)), message, capsys)
