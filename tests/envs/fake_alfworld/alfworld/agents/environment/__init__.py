"""A fake of ALFWorld's batched env: one kitchen, the task "put a apple in fridge".

The game is drawn with Python's `random` at reset (as ALFWorld draws its game files): where the
apple lies. Goal conditions: the apple taken (0.5), the apple in the fridge (1.0, won). Frames
are BGR (as ALFWorld's `get_frames`), one colour per place.
"""

import random

import numpy as np

RECEPTACLES = ("cabinet 1", "cabinet 2", "countertop 1", "fridge 1")
# A colour per place, (R, G, B); the frame holds it as (B, G, R).
COLOURS = {
    None: (10, 20, 30),
    "cabinet 1": (200, 0, 0),
    "cabinet 2": (0, 200, 0),
    "countertop 1": (0, 0, 200),
    "fridge 1": (200, 200, 0),
}
FRAME_SHAPE = (30, 40, 3)
CREATED = []  # the train_eval of every env built


class FakeGame:
    def __init__(self, apple_at, max_steps):
        self.apple_at, self.max_steps = apple_at, max_steps
        self.at, self.holding, self.fridge_open, self.in_fridge, self.steps = (
            None,
            False,
            False,
            False,
            0,
        )

    def intro(self):
        seen = ", ".join(f"a {r}" for r in RECEPTACLES[:-1]) + f", and a {RECEPTACLES[-1]}"
        return (
            f"-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking "
            f"quickly around you, you see {seen}.\n\nYour task is to: put a apple in fridge."
        )

    def commands(self):
        out = [f"go to {r}" for r in RECEPTACLES if r != self.at]
        if self.at == self.apple_at and not self.holding and not self.in_fridge:
            out.append(f"take apple 1 from {self.at}")
        if self.at == "fridge 1":
            out.append("close fridge 1" if self.fridge_open else "open fridge 1")
            if self.holding and self.fridge_open:
                out.append("put apple 1 in/on fridge 1")
        return out + ["inventory", "look"]

    def step(self, command):
        self.steps += 1
        if command not in self.commands():
            return "Nothing happens."
        if command.startswith("go to "):
            self.at = command[len("go to ") :]
            here = "a apple 1" if self.at == self.apple_at and not self.holding else "nothing"
            if self.at == "fridge 1" and not self.fridge_open:
                return f"You arrive at loc 3. The {self.at} is closed."
            return f"You arrive at loc 2. On the {self.at}, you see {here}."
        if command.startswith("take "):
            self.holding = True
            return f"You pick up the apple 1 from the {self.at}."
        if command.startswith("open "):
            self.fridge_open = True
            return "You open the fridge 1. The fridge 1 is open. In it, you see nothing."
        if command.startswith("close "):
            self.fridge_open = False
            return "You close the fridge 1."
        if command.startswith("put "):
            self.holding, self.in_fridge = False, True
            return "You put the apple 1 in/on the fridge 1."
        return "You are carrying: nothing." if command == "inventory" else self.intro()

    @property
    def goal_rate(self):
        return 1.0 if self.in_fridge else 0.5 if self.holding else 0.0


class FakeTWEnv:
    """ALFWorld's text env: reset / step, no frames."""

    def __init__(self, config, train_eval="train"):
        CREATED.append(train_eval)  # one simulator each, in ALFWorld: the tests count them
        self.config, self.train_eval = config, train_eval
        self.max_steps = config["dagger"]["training"]["max_nb_steps_per_episode"]

    def init_env(self, batch_size):
        assert batch_size == 1
        return self

    def _infos(self):
        game = self.game
        return {
            "admissible_commands": [game.commands()],
            "won": [game.in_fridge],
            "goal_condition_success_rate": [game.goal_rate],
            "extra.gamefile": ["kitchen"],
        }

    def reset(self):
        self.game = FakeGame(random.choice(RECEPTACLES[:-1]), self.max_steps)
        return [self.game.intro()], self._infos()

    def step(self, actions):
        text = self.game.step(actions[0])
        done = self.game.in_fridge or self.game.steps > self.max_steps
        return [text], None, [done], self._infos()


class FakeThorEnv(FakeTWEnv):
    """ALFWorld's visual env: the same game, with a frame."""

    def get_frames(self):
        frame = np.zeros(FRAME_SHAPE, np.uint8)
        frame[:] = COLOURS[self.game.at][::-1]
        frame[0, 0] = (1, 2, 3)  # one BGR pixel to find after the flip and the resize
        return frame[None]


def get_environment(env_type):
    return {"AlfredTWEnv": FakeTWEnv, "AlfredThorEnv": FakeThorEnv}[env_type]
