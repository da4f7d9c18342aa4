"""`sampling.constrain_action`: the run's setup builds the env's legal-action automaton and the
trainer hands it to the rollout and the evaluator (the automaton itself: tests/rollout)."""

from __future__ import annotations

import numpy as np
from support.automaton import feed

from gtr_turbo_jax.rollout import evaluate
from gtr_turbo_jax.train import learner as learner_module
from gtr_turbo_jax.train.run_config import load_config, smoke
from gtr_turbo_jax.train.setup import build_setup


def test_off_by_default():
    assert build_setup(smoke(load_config("sokoban"))).constraint is None


def test_the_setup_allows_exactly_the_envs_actions():
    setup = build_setup(smoke(load_config("sokoban", ["--config.sampling.constrain_action=True"])))
    table = np.asarray(setup.constraint.next_state)
    assert table.shape[1] == setup.model_config.text.vocab_size
    encode = lambda text: setup.tokenizer(text, add_special_tokens=False)["input_ids"]
    names = [name.decode() for name in setup.spec.action_names]
    assert names  # Sokoban's four moves (and whatever else the env names)
    for name in names:
        assert feed(table, encode(f'{{"thoughts": "go", "action": "{name}"}}')) >= 0, name
    assert feed(table, encode('{"thoughts": "go", "action": "jump"}')) == -1


def test_the_learner_samples_rollouts_and_evaluations_under_it(monkeypatch):
    seen = {}
    real_rollout, real_evaluator = learner_module.make_rollout, evaluate.make_evaluator

    def rollout(*args, **kwargs):
        seen["rollout"] = kwargs.get("constraint")
        return real_rollout(*args, **kwargs)

    def evaluator(*args, **kwargs):
        seen["evaluator"] = kwargs.get("constraint")
        return real_evaluator(*args, **kwargs)

    monkeypatch.setattr(learner_module, "make_rollout", rollout)
    monkeypatch.setattr(evaluate, "make_evaluator", evaluator)
    config = smoke(load_config("sokoban", ["--config.sampling.constrain_action=True"]))
    learner = learner_module.Learner(config)
    _ = learner.evaluator  # built on first use
    assert seen["rollout"] is learner.setup.constraint is seen["evaluator"]
    assert seen["rollout"] is not None
