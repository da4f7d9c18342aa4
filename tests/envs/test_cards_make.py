"""Building the card games: constructor overrides, their checks, the registry and gymnax."""

import gymnax
import pytest

from gtr_turbo_jax.envs import make
from gtr_turbo_jax.envs.cards import Blackjack, EZPoints, NumberLine, Points24


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Points24(target=0), "target must be an integer in \\[1, 10000\\], got 0"),
        (lambda: Points24(target=2.5), "target must be an integer"),
        (lambda: Points24(max_formula_length=0), "max_formula_length must be an integer"),
        (lambda: Points24(max_formula_length=65), "max_formula_length must be an integer"),
        (lambda: Points24(solvable_only="yes"), "solvable_only must be True or False"),
        (lambda: Points24(target=9999, solvable_only=True), "no four cards make target=9999"),
        (lambda: EZPoints(max_formula_length=-1), "max_formula_length must be an integer"),
        (
            lambda: NumberLine(max_position=0),
            "max_position must be an integer in \\[1, 9\\], got 0",
        ),
        (lambda: NumberLine(max_position=10), "max_position must be an integer in \\[1, 9\\]"),
    ],
)
def test_bad_constructor_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_make_splits_overrides():
    env, params = make("points24", solvable_only=True, max_formula_length=12, penalty=-2.0)
    assert isinstance(env, Points24) and env.solvable_only and env.formula_capacity == 13
    assert params.penalty == -2.0 and params.correct_reward == 10.0
    env, params = make("numberline", max_position=3)
    assert env.max_position == 3 and params.max_steps_in_episode == 6
    env, params = make("blackjack", natural=True)
    assert isinstance(env, Blackjack) and params.natural
    env, params = make("ezpoints")
    assert env.num_actions == 13 and env.image_shape == (196, 224, 3)
    with pytest.raises(ValueError, match="unknown override"):
        make("blackjack", size=3)


def test_gymnax_registration():
    env, params = gymnax.make("NumberLine-gtr", max_position=4)
    assert isinstance(env, NumberLine) and env.max_position == 4
    assert env.action_space(params).n == 2
    space = env.observation_space(params)
    assert space.spaces["image"].shape == (224, 280, 3)
    assert set(space.spaces) == {"image", "target", "current"}


def test_image_sizes_are_multiples_of_28():
    for env in (Points24(), EZPoints(), NumberLine(), Blackjack()):
        height, width, channels = env.image_shape
        assert height % 28 == 0 and width % 28 == 0 and channels == 3, env.name
