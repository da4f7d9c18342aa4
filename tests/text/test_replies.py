"""Reply parsing rules (METHOD.md section 1), hand-worked cases."""

import numpy as np
import pytest

from gtr_turbo_jax.text.replies import is_valid_reply, matched_actions, parse_reply

SOKOBAN = ("Up", "Down", "Left", "Right")
POINTS24 = tuple(str(i) for i in range(1, 11)) + ("+", "-", "*", "/", "(", ")", "=")


@pytest.mark.parametrize(
    "text, names, expected",
    [
        ('{"thoughts": "box left of me", "action": "Left"}', SOKOBAN, [2]),
        # only the text after the LAST marker counts
        ('{"thoughts": "not \\"action\\": Up", "action": "Down"}', SOKOBAN, [1]),
        ('"action": "Down"} "action": "Right"', SOKOBAN, [3]),
        ('{"thoughts": "Up or Down?", "action": "Up or Down"}', SOKOBAN, [0, 1]),
        ('{"thoughts": "move up", "action": "up"}', SOKOBAN, []),  # case matters
        ('{"thoughts": "no marker"}', SOKOBAN, []),
        ('{"action": "10"}', POINTS24, [9]),  # "10" wins over "1" (and over nothing else)
        ('{"action": "1"}', POINTS24, [0]),
        ('{"action": "10 or 1"}', POINTS24, [0, 9]),
        ('"action": "Up", "action": ', SOKOBAN, []),  # last marker with nothing after it
    ],
)
def test_matched_actions(text, names, expected):
    assert matched_actions(text, names) == expected


def test_parse_reply_legal_and_valid():
    rng = np.random.default_rng(0)
    reply = parse_reply('{"thoughts": "push the box", "action": "Right"}', SOKOBAN, rng)
    assert (reply.action, reply.legal, reply.valid, reply.thoughts) == (
        3,
        True,
        True,
        "push the box",
    )


def test_parse_reply_ambiguous_draws_uniform_random_legal_action():
    rng = np.random.default_rng(0)
    draws = [parse_reply('{"action": "Up Down"}', SOKOBAN, rng) for _ in range(4000)]
    assert not any(d.legal for d in draws) and not any(d.valid for d in draws)
    counts = np.bincount([d.action for d in draws], minlength=4)
    assert counts.min() > 900 and counts.max() < 1100  # uniform over the 4 actions


def test_parse_reply_legal_but_invalid_json():
    reply = parse_reply('{"thoughts": "cut off", "action": "Up"', SOKOBAN, np.random.default_rng(0))
    assert reply.legal and reply.action == 0 and not reply.valid and reply.thoughts == ""


@pytest.mark.parametrize(
    "text, valid",
    [
        ('{"thoughts": "a", "action": "Up"}', True),
        ('{"action": "Up"}', False),  # missing key
        ('{"thoughts": 3, "action": "Up"}', False),  # wrong type
        ('["thoughts", "action"]', False),
        ("", False),
        ("[" * 100000, False),  # deep nesting must not crash
        ('{"thoughts": "é ☃", "action": "Up"}', True),
    ],
)
def test_is_valid_reply(text, valid):
    assert is_valid_reply(text) is valid
