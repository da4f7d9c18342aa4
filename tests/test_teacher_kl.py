"""experiments/teacher_kl.py's statistics on a hand-worked pair of replies."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def teacher_kl(load_experiment):
    return load_experiment("teacher_kl")


def test_kl_stats_on_hand_worked_replies(teacher_kl):
    # Reply 0: thoughts at positions 0-2, k1 = 0.5, -0.2, 0.05 (the action at 3 is not counted).
    # Reply 1: invalid, left out of every statistic.
    agent = np.log(np.array([[0.5, 0.4, 0.9, 0.2], [0.5, 0.5, 0.5, 0.5]], np.float32))
    k1 = np.array([[0.5, -0.2, 0.05, 3.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], bool)
    stats = teacher_kl.kl_stats(agent, agent - k1, mask, np.array([True, False]))
    np.testing.assert_allclose(stats["kl"], [(0.5 + 0.0 + 0.05) / 3], rtol=1e-5)
    np.testing.assert_allclose(stats["reply_kl"], [0.55], rtol=1e-5)
    np.testing.assert_array_equal(stats["over"], [1.0, 0.0, 0.0])
