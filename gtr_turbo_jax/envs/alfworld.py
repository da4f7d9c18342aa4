"""ALFWorld (METHOD.md section 5) as a Python env: `gtr-turbo train --env=alfworld` with ALFWorld
installed (`pip install alfworld[full]`, `alfworld-download`, AI2-THOR for the visual env). Its
settings are those of ALFWorld's `configs/base_config.yaml` (`default_config`), or a yaml config
of your own (`--config.env.config_path=PATH` or `$ALFWORLD_CONFIG`).

One `ALFWorld` object drives one ALFWorld game through ALFWorld's own batched env
(`alfworld.agents.environment.get_environment(env_type)(config, train_eval).init_env(1)`), imported
at the first reset, so building the env (configs, templates, tests) never needs ALFWorld.

- **Prompt**: the task, the current observation text and the admissible commands, numbered
  ("1) go to cabinet 1 2) open drawer 2 ..."), as three word slots (`envs.agent.word_slot`): the
  text is lower-cased and split into words and punctuation, each written " word" from a fixed
  vocabulary (ALFRED's object and receptacle names, the words of ALFWorld's feedback and command
  templates, numbers; `vocabulary=PATH` replaces the names and words). A word outside it is
  written "unknown" (counted in `info["unknown_words"]`, warned once per word); text past a
  field's size is cut (`info["cut_words"]`), and so is text past `tokens_per_word` tokens a word
  of the field's size (0: the vocabulary's mean token count; `envs.agent.word_slot`), which keeps
  the prompt near its usual length instead of every word at the longest one's. The image is the
  THOR frame (RGB), resized to `image_size` square by nearest pixels; the text-only
  `AlfredTWEnv` shows a black image.
- **Actions**: the reply's `"action"` is the number of an admissible command, "1" to
  `MAX_COMMANDS` (the paper's reply names the command text; a number keeps the action set fixed).
  A number past the state's list is an illegal action: the game does not step.
- **Reward** (RL4VLM's): `won_reward * won + goal-condition rate`, each step, plus
  `illegal_penalty` for an illegal action; `info["success"]` is `won` (a return > 0 is not a win
  here: the goal-condition rate is paid every step).
- **Episode end**: terminated when won; truncated after `max_steps_in_episode` actions (40), when
  ALFWorld ends the game, or after `repeat_limit` identical actions in a row (5), which also pays
  `repeat_penalty` (-3).
- **Seeds**: `reset(seed)` draws the game with Python's `random` seeded by `seed` (ALFWorld picks
  its game with `random`), restoring the global random state after, so a run's key fixes its
  games. `split="test"` plays `eval_split` (ALFWorld's `eval_out_of_distribution` by default).
"""

from __future__ import annotations

import os
import random
import re
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gtr_turbo_jax.envs.agent import AgentSpec, word_slot
from gtr_turbo_jax.envs.host import PythonEnv

MAX_COMMANDS = 50  # the action set: "1" .. "50"; a state's commands past it are cut (and counted)
UNKNOWN = "unknown"  # what a word outside the vocabulary is written as

# ALFRED's object and receptacle names as ALFWorld's text writes them.
NAMES = """
alarmclock apple armchair baseballbat basketball bathtub bathtubbasin bed blinds book boots bowl box
bread butterknife cabinet candle cart cd cellphone chair cloth coffeemachine coffeetable countertop
creditcard cup curtains desk desklamp diningtable dishsponge dogbed drawer dresser egg floorlamp
footstool fork fridge garbagebag garbagecan glassbottle handtowel handtowelholder houseplant kettle
keychain knife ladle laptop laundryhamper laundryhamperlid lettuce lightswitch microwave mirror mug
newspaper ottoman painting pan papertowel papertowelroll pen pencil peppershaker pillow plate
plunger poster pot potato remotecontrol safe saltshaker scrubbrush shelf showerdoor showerglass
showerhead sidetable sink sinkbasin soapbar soapbottle sofa spatula spoon spraybottle statue stool
stoveburner stoveknob teddybear television tennisracket tissuebox toaster toilet toiletpaper
toiletpaperhanger toiletpaperroll tomato towel towelholder tvstand vase watch wateringcan window
winebottle
""".split()
# The words of ALFWorld's observations, task descriptions and command templates.
WORDS = """
a alfred an and any anything are around arrive as at be by can carrying clean cleaned close closed
cold cool cooled desk don done empty examine facing find floor for from go hand happens has have
heat heated here holding hot i in into inventory is it its lamp light loc look looking middle move
moved no nothing not now object objects of off on onto open opened pick put quickly room see slice
sliced some t take task textworld that the them then there this to toggle toggled turn turned two
under up use using was welcome what where which will with you your
""".split()
PUNCTUATION = (",", ".", ":", "!", "?", "'", "-", "=", "(", ")", "/")

FULL_TEXT = (
    "You are an expert in the ALFRED embodied environment. Your task is to:{task} The text"
    " description of the current scene:{observation} Your admissible actions, numbered:{commands}"
    " Choose one of them by its number."
)
FULL_REPLY = (
    '{"thoughts": "first describe what you see in the image using the text description, then'
    ' think about which action completes the task", "action": "the number of an admissible'
    ' action"}'
)
BRIEF_TEXT = "Task:{task} Scene:{observation} Actions:{commands} Which number?"
BRIEF_REPLY = '{"thoughts": "...", "action": "number"}'
COMPACT_TEXT = "Task:{task} Scene:{observation} Actions:{commands}"
FIELDS = ("task", "observation", "commands")


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of `text`, ALFWorld's banner ("-= ... =-") left out."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", re.sub(r"-=.*?=-", " ", text.lower()))


def split_task(text: str) -> tuple[str, str]:
    """(the scene, the task) of a game's first observation: "... Your task is to: put ...".
    No task sentence: (text, "")."""
    scene, marker, task = text.partition("Your task is to:")
    return (scene, task) if marker else (text, "")


class ALFWorld(PythonEnv):
    """One ALFWorld game behind the `PythonEnv` contract (module docstring)."""

    action_names = tuple(str(i) for i in range(1, MAX_COMMANDS + 1))
    agent_spec = AgentSpec(
        texts={"full": FULL_TEXT, "brief": BRIEF_TEXT, "compact": COMPACT_TEXT},
        replies={"full": FULL_REPLY, "brief": BRIEF_REPLY, "compact": BRIEF_REPLY},
        slots=lambda env: {
            name: word_slot(name, env.vocabulary, env.tokens_per_word or None) for name in FIELDS
        },
    )

    def __init__(
        self,
        config_path: str = "",
        env_type: str = "AlfredThorEnv",
        split: str = "train",
        eval_split: str = "eval_out_of_distribution",
        vocabulary: str = "",
        image_size: int = 280,
        task_words: int = 24,
        observation_words: int = 192,
        command_words: int = 384,
        max_number: int = 60,
        tokens_per_word: float = 0.0,
        max_steps_in_episode: int = 40,
        repeat_limit: int = 5,
        repeat_penalty: float = -3.0,
        won_reward: float = 50.0,
        illegal_penalty: float = -1.0,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}: need 'train' or 'test'")
        sizes = dict(image_size=image_size, task_words=task_words, max_number=max_number,
                     observation_words=observation_words, command_words=command_words,
                     max_steps_in_episode=max_steps_in_episode, repeat_limit=repeat_limit)  # fmt: skip
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: need an int >= 1")
        if not tokens_per_word >= 0:
            raise ValueError(
                f"tokens_per_word={tokens_per_word!r}: need >= 0 (0: the vocabulary's mean)"
            )
        self.tokens_per_word = float(tokens_per_word)
        self.config_path = config_path or os.environ.get("ALFWORLD_CONFIG", "")
        self.env_type, self.train_eval = env_type, "train" if split == "train" else eval_split
        self.image_size, self.max_steps_in_episode = image_size, max_steps_in_episode
        self.limits = {"task": task_words, "observation": observation_words,
                       "commands": command_words}  # fmt: skip
        self.repeat_limit, self.repeat_penalty = repeat_limit, float(repeat_penalty)
        self.won_reward, self.illegal_penalty = float(won_reward), float(illegal_penalty)
        names = _read_words(vocabulary) if vocabulary else [*NAMES, *WORDS]
        markers = [f"{i})" for i in range(1, MAX_COMMANDS + 1)]
        numbers = [str(i) for i in range(max_number + 1)]
        self.vocabulary = tuple(dict.fromkeys([UNKNOWN, *names, *numbers, *PUNCTUATION, *markers]))
        self.word_ids = {word: i for i, word in enumerate(self.vocabulary)}
        self._backend: Any = None
        self._warned: set[str] = set()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def prompt_field_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The word-id fields' shapes, without starting a game (`text.prompts` reads them)."""
        return {
            name: jax.ShapeDtypeStruct((size,), jnp.int32) for name, size in self.limits.items()
        }

    # ALFWorld's side: one game of its batched env (batch size 1).

    def _game(self) -> Any:
        if self._backend is None:
            self._backend = make_backend(self.config_path, self.env_type, self.train_eval)
        return self._backend

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        game = self._game()
        saved = random.getstate()
        random.seed(int(seed))
        try:
            texts, infos = game.reset()
        finally:
            random.setstate(saved)
        scene, self.task = split_task(texts[0])
        self.time, self.recent = 0, []
        self._read(scene, infos)
        return self._observe()

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        self.time += 1
        legal = 0 <= action < len(self.commands)
        ended = False
        if legal:
            command = self.commands[action]
            texts, _, dones, infos = self._game().step([command])
            self._read(texts[0], infos)
            ended = bool(dones[0])
        else:  # the game does not step; the agent is told, as ALFWorld answers a bad command
            command, self.scene = f"#{action}", "Nothing happens."
        self.recent = [*self.recent, command][-self.repeat_limit :]
        repeated = len(self.recent) == self.repeat_limit and len(set(self.recent)) == 1
        reward = self.won_reward * self.won + self.goal_rate
        reward += 0.0 if legal else self.illegal_penalty
        reward += self.repeat_penalty if repeated and not self.won else 0.0
        truncated = not self.won and (ended or repeated or self.time >= self.max_steps_in_episode)
        obs = self._observe()
        info = {"success": self.won, "goal_condition_success_rate": self.goal_rate,
                "legal": legal, "unknown_words": self.unknown, "cut_words": self.cut}  # fmt: skip
        return obs, float(reward), self.won, truncated, info

    def _read(self, text: str, infos: dict[str, Any]) -> None:
        self.scene = text
        self.commands = list(infos["admissible_commands"][0])
        self.won = bool(infos["won"][0])
        self.goal_rate = float(infos["goal_condition_success_rate"][0])

    # Our side: the observation the prompt reads.

    def _observe(self) -> dict[str, np.ndarray]:
        self.unknown = self.cut = 0
        commands = []
        for i, command in enumerate(self.commands[:MAX_COMMANDS]):
            commands += [f"{i + 1})", *split_words(command)]
        self.cut += max(0, len(self.commands) - MAX_COMMANDS)
        texts = {"task": split_words(self.task), "observation": split_words(self.scene),
                 "commands": commands}  # fmt: skip
        fields = {name: self._encode(name, words) for name, words in texts.items()}
        return {"image": self._frame(), **fields}

    def _encode(self, name: str, words: Sequence[str]) -> np.ndarray:
        limit = self.limits[name]
        self.cut += max(0, len(words) - limit)
        ids = np.full(limit, -1, np.int32)
        for position, word in enumerate(words[:limit]):
            if word not in self.word_ids:
                self.unknown += 1
                if word not in self._warned:
                    self._warned.add(word)
                    warnings.warn(
                        f"alfworld: {word!r} is not in the prompt's vocabulary, written "
                        f"{UNKNOWN!r} (add it with --config.env.vocabulary=FILE)",
                        stacklevel=2,
                    )
            ids[position] = self.word_ids.get(word, 0)
        return ids

    def _frame(self) -> np.ndarray:
        size = self.image_size
        if not hasattr(self._backend, "get_frames"):  # the text-only env
            return np.zeros((size, size, 3), np.uint8)
        frame = np.asarray(self._backend.get_frames()[0])[:, :, ::-1]  # ALFWorld gives BGR
        rows = np.arange(size) * frame.shape[0] // size
        cols = np.arange(size) * frame.shape[1] // size
        return np.ascontiguousarray(frame[rows][:, cols], dtype=np.uint8)


def _read_words(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().split()
    except OSError as err:
        raise ValueError(f"alfworld vocabulary {path!r}: {err.strerror}") from None


def default_config() -> dict[str, Any]:
    """The keys ALFWorld's envs read, at the values of its `configs/base_config.yaml`, the data
    where `alfworld-download` puts it (ALFWorld expands `$ALFWORLD_DATA`): what a run uses
    when no yaml config is given (the pip package ships none)."""
    data = "$ALFWORLD_DATA"
    return {
        "dataset": {
            "data_path": f"{data}/json_2.1.1/train",
            "eval_id_data_path": f"{data}/json_2.1.1/valid_seen",
            "eval_ood_data_path": f"{data}/json_2.1.1/valid_unseen",
            "num_train_games": -1,
            "num_eval_games": -1,
        },
        "logic": {"domain": f"{data}/logic/alfred.pddl", "grammar": f"{data}/logic/alfred.twl2"},
        "env": {
            "type": "AlfredThorEnv",
            "domain_randomization": False,
            "task_types": [1, 2, 3, 4, 5, 6],
            "expert_timeout_steps": 150,
            "expert_type": "handcoded",
            "goal_desc_human_anns_prob": 0.0,
            "thor": {
                "screen_width": 300,
                "screen_height": 300,
                "smooth_nav": False,
                "save_frames_to_disk": False,
                "save_frames_path": "./videos/",
            },  # fmt: skip
        },
        "controller": {"type": "oracle", "debug": False, "load_receps": True},
        "mask_rcnn": {"pretrained_model_path": f"{data}/detectors/mrcnn.pth"},
        "general": {"training_method": "dagger"},
        "dagger": {"training": {"max_nb_steps_per_episode": 50}},
        "rl": {"training": {"max_nb_steps_per_episode": 50}},
    }


def make_backend(config_path: str, env_type: str, train_eval: str) -> Any:
    """ALFWorld's own env for one game, from its yaml config (`default_config()` without one),
    `env.type` set to `env_type`."""
    try:
        import yaml
        from alfworld.agents.environment import get_environment
    except ImportError as err:
        raise ValueError(
            f"env 'alfworld' needs ALFWorld installed (pip install alfworld[full], then "
            f"alfworld-download): {err}"
        ) from None
    config = default_config()
    if config_path:
        try:
            with open(config_path, encoding="utf-8") as file:
                config = yaml.safe_load(file)
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"alfworld config {config_path!r}: {err}") from None
        if not isinstance(config, dict):
            raise ValueError(f"alfworld config {config_path!r}: not a yaml mapping")
    config.setdefault("env", {})["type"] = env_type
    return get_environment(env_type)(config, train_eval=train_eval).init_env(batch_size=1)
