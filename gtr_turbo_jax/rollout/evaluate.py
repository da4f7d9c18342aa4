"""Evaluation: N held-out episodes played to the end, with success, return and thought metrics.

`make_evaluator(...)` builds the compiled rollout once (`make_rollout`); each call of the returned
`Evaluator` resets exactly `num_episodes` envs and steps the rollout one turn per call (one
compilation, `num_turns=1`, shared by every turn and every evaluation) until each env's FIRST
episode has ended or `max_turns` turns have passed. Later episodes that automatic resets start are
ignored, so the success rate is an unbiased estimate over the first episodes of the held-out
levels (short successful episodes are not over-counted). Greedy or sampled replies, as the given
`SamplingConfig` says.

An episode cut at `max_turns` before its env ended it counts as a failure (`finished=False`).

Metrics (floats, METHOD.md sections 3 and 5, thoughts from the valid replies only):
  success_rate    episodes that ended with return > 0 (or the env's own success flag, e.g.
                  ALFWorld's `won`: the rollout's `success` at the episode's last turn)
  return_mean     mean episode return
  episode_length  mean turns per episode
  valid_rate      valid replies / replies
  self_bleu       self-BLEU of the thoughts within an episode, mean over the episodes with at
                  least two valid replies (nan if none)
  thought_len     mean words per thought (nan if no valid reply)
  grounding       mean fraction of true claims per thought that makes a claim (`metrics.GRAMMAR`),
                  checked against the true state (nan if no thought made one, or if the env has
                  no grounding grammar)
  no_effect_rate  moves after which the state was unchanged (a Sokoban move into a wall or a
                  stuck box, a rejected card), over the moves followed by another turn of their
                  episode (nan if none, or if the env has no state fields); a greedy policy
                  repeats such a move until the step limit
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from transformers import PreTrainedTokenizerBase

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.models.defs import ModelDefs
from gtr_turbo_jax.rollout import metrics as eval_metrics
from gtr_turbo_jax.rollout.constraint import ActionConstraint
from gtr_turbo_jax.rollout.multiturn import ReplyFn, Rollout, make_rollout
from gtr_turbo_jax.rollout.recording import save_episode_gif
from gtr_turbo_jax.rollout.sampler import SamplingConfig
from gtr_turbo_jax.text.image import ImageConfig
from gtr_turbo_jax.text.parse import ReplySpec
from gtr_turbo_jax.text.prompts import PromptTemplate

METRIC_NAMES = (
    "success_rate",
    "return_mean",
    "episode_length",
    "valid_rate",
    "self_bleu",
    "thought_len",
    "grounding",
    "no_effect_rate",
)


@dataclasses.dataclass
class EpisodeRecord:
    """One evaluation episode, turn by turn (every list has one entry per turn)."""

    frames: list[np.ndarray]  # uint8[H, W, 3]: the image each reply answered ([] unless recorded)
    replies: list[str]  # the decoded replies
    actions: list[int]  # the actions the env executed
    rewards: list[float]
    success: bool  # the episode ended within max_turns and succeeded (return > 0 by default)
    fields: list[dict[str, np.ndarray]]  # the prompt fields (true state) each reply answered
    valid: list[bool] = dataclasses.field(default_factory=list)  # valid JSON replies
    thoughts: list[str] = dataclasses.field(default_factory=list)  # "" for invalid replies
    finished: bool = False  # the env ended the episode (terminated or truncated) in time

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def episode_return(self) -> float:
        return float(sum(self.rewards))

    def save_gif(self, path: str | Path, fps: float = 1.0) -> Path:
        """The episode as an animated GIF (`recording.save_episode_gif`); needs recorded frames."""
        if not self.frames:
            raise ValueError(
                "this episode has no frames: record it with make_evaluator(..., record=k)"
            )
        return save_episode_gif(path, np.stack(self.frames), self.replies, self.rewards, fps)


@dataclasses.dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]  # the keys of `METRIC_NAMES`
    episodes: list[EpisodeRecord]  # one per env, in env order


def reply_thoughts(text: str) -> str:
    """The "thoughts" string of a JSON reply, "" if there is none."""
    try:
        reply = json.loads(text)
    except (ValueError, RecursionError):
        return ""
    thoughts = reply.get("thoughts") if isinstance(reply, dict) else None
    return thoughts if isinstance(thoughts, str) else ""


def _check_counts(num_episodes: Any, max_turns: Any, record: Any) -> None:
    for name, value in (("num_episodes", num_episodes), ("max_turns", max_turns)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r}: need an int >= 1")
    if not isinstance(record, int) or not 0 <= record <= num_episodes:
        raise ValueError(f"record={record!r}: need an int in 0..num_episodes={num_episodes}")


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _no_effect_moves(episodes: Sequence[EpisodeRecord]) -> list[float]:
    """1.0 / 0.0 per move followed by a turn of its episode (its fields unchanged or not); none
    for envs without state fields."""
    return [
        float(all(np.array_equal(before[k], after[k]) for k in before))
        for e in episodes
        for before, after in zip(e.fields, e.fields[1:])
        if before
    ]


def episode_metrics(env_name: str, episodes: Sequence[EpisodeRecord]) -> dict[str, float]:
    """The `METRIC_NAMES` of finished evaluation episodes (see the module docstring)."""
    if not episodes:
        raise ValueError("episode_metrics needs at least one episode")
    valid_thoughts = [
        [(t, f) for t, f, v in zip(e.thoughts, e.fields, e.valid) if v] for e in episodes
    ]
    flat = [pair for pairs in valid_thoughts for pair in pairs]
    bleus = [eval_metrics.self_bleu([t for t, _ in pairs]) for pairs in valid_thoughts]
    return {
        "success_rate": _mean([float(e.success) for e in episodes]),
        "return_mean": _mean([e.episode_return for e in episodes]),
        "episode_length": _mean([float(e.length) for e in episodes]),
        "valid_rate": sum(sum(e.valid) for e in episodes) / sum(e.length for e in episodes),
        "self_bleu": _mean([b for b in bleus if not math.isnan(b)]),
        "thought_len": _mean([float(eval_metrics.thought_length(t)) for t, _ in flat]),
        "grounding": eval_metrics.mean_grounding(
            eval_metrics.grounding(env_name, t, f) for t, f in flat
        )
        if eval_metrics.has_grounding(env_name)
        else math.nan,
        "no_effect_rate": _mean(_no_effect_moves(episodes)),
    }


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """`evaluator(base, policy, value_head, key) -> EvalResult` (see the module docstring).

    `dataclasses.replace(evaluator, max_turns=..., record=...)` keeps the compiled rollout.
    `envs_at_once`: play the episodes in rounds of at most that many envs (a Python env such as
    ALFWorld runs a simulator per env); round r plays with `fold_in(key, r)`, so every evaluation
    still plays the same episodes. None: all at once, with `key`."""

    env_name: str
    rollout: Rollout
    tokenizer: PreTrainedTokenizerBase
    num_episodes: int
    max_turns: int
    record: int
    envs_at_once: int | None = None

    def __post_init__(self) -> None:
        _check_counts(self.num_episodes, self.max_turns, self.record)
        if self.envs_at_once is not None and (
            not isinstance(self.envs_at_once, int) or self.envs_at_once < 1
        ):
            raise ValueError(f"envs_at_once={self.envs_at_once!r}: need an int >= 1 or None")

    def __call__(self, base: Any, policy: Any, value_head: Any, key: jax.Array) -> EvalResult:
        size = min(self.envs_at_once or self.num_episodes, self.num_episodes)
        episodes: list[EpisodeRecord] = []
        for round_, start in enumerate(range(0, self.num_episodes, size)):
            round_key = key if size == self.num_episodes else jax.random.fold_in(key, round_)
            count = min(size, self.num_episodes - start)
            record = min(max(self.record - start, 0), count)
            episodes += self._play(base, policy, value_head, round_key, count, record)
        return EvalResult(episode_metrics(self.env_name, episodes), episodes)

    def _play(
        self, base: Any, policy: Any, value_head: Any, key: jax.Array, num_envs: int, record: int
    ) -> list[EpisodeRecord]:
        """The first episodes of `num_envs` envs reset from `key`, the first `record` with frames."""
        state = self.rollout.init(key, num_envs)
        turns: list[dict[str, Any]] = []  # per turn: host copies of what the records need
        playing = np.ones(num_envs, bool)  # still in its first episode
        finished = np.zeros(num_envs, bool)
        for _ in range(self.max_turns):
            frames = np.asarray(state.obs["image"][:record])
            state, batch, metrics = self.rollout.run(state, base, policy, value_head, num_turns=1)
            turn = jax.device_get(
                dict(
                    ids=batch.response_ids[0],
                    mask=batch.response_mask[0],
                    valid=batch.valid[0],
                    action=batch.action[0],
                    reward=batch.reward[0],
                    done=batch.terminated[0] | batch.truncated[0],
                    success=metrics["success"][0],
                    fields={name: value[0] for name, value in metrics["fields"].items()},
                )
            )
            turn["frames"], turn["playing"] = frames, playing.copy()
            rows = np.flatnonzero(playing)
            turn["replies"] = dict(
                zip(
                    rows,
                    self.tokenizer.batch_decode(
                        [turn["ids"][e][turn["mask"][e]].tolist() for e in rows],
                        skip_special_tokens=True,
                    ),
                )
            )
            turns.append(turn)
            finished |= playing & turn["done"]
            playing &= ~turn["done"]
            if not playing.any():
                break
        return [self._record(e, turns, bool(finished[e]), record) for e in range(num_envs)]

    def _record(
        self, env: int, turns: list[dict[str, Any]], finished: bool, record: int
    ) -> EpisodeRecord:
        played = [turn for turn in turns if turn["playing"][env]]
        replies = [turn["replies"][env] for turn in played]
        valid = [bool(turn["valid"][env]) for turn in played]
        rewards = [float(turn["reward"][env]) for turn in played]
        return EpisodeRecord(
            frames=[turn["frames"][env] for turn in played] if env < record else [],
            replies=replies,
            actions=[int(turn["action"][env]) for turn in played],
            rewards=rewards,
            success=finished and bool(played[-1]["success"][env]),
            fields=[{k: v[env] for k, v in turn["fields"].items()} for turn in played],
            valid=valid,
            thoughts=[reply_thoughts(r) if v else "" for r, v in zip(replies, valid)],
            finished=finished,
        )


def make_evaluator(
    env_name: str,
    env: VisualEnv,
    env_params: Any,
    template: PromptTemplate,
    spec: ReplySpec,
    image_config: ImageConfig,
    sampling: SamplingConfig,
    defs: ModelDefs,
    tokenizer: PreTrainedTokenizerBase,
    *,
    num_episodes: int,
    max_turns: int | None = None,
    record: int = 0,
    constraint: ActionConstraint | None = None,
    reply_fn: ReplyFn | None = None,
) -> Evaluator:
    """An `Evaluator` of `num_episodes` first episodes of `env` under `env_params` (pass the
    held-out split's params, e.g. `Sokoban.params_for(default_bank(size, boxes, "test"))`).

    max_turns: the most turns an episode may take (default: `env_params.max_steps_in_episode`).
    record: keep the frames of the first `record` episodes (for `EpisodeRecord.save_gif`).
    constraint, reply_fn: as in `make_rollout` (a scripted policy for tests).
    """
    envs.env_class(env_name)  # an unknown name is one clear error before anything is built
    if max_turns is None:
        if not hasattr(env_params, "max_steps_in_episode"):
            raise ValueError(
                f"{type(env_params).__name__} has no max_steps_in_episode: pass max_turns"
            )
        max_turns = int(env_params.max_steps_in_episode)
    _check_counts(num_episodes, max_turns, record)  # before building anything
    rollout = make_rollout(
        env,
        env_params,
        template,
        spec,
        image_config,
        sampling,
        defs,
        constraint=constraint,
        reply_fn=reply_fn,
        next_values=False,  # evaluation reads no values: skip their extra forwards
    )
    return Evaluator(env_name, rollout, tokenizer, num_episodes, max_turns, record)


__all__ = [
    "METRIC_NAMES",
    "EpisodeRecord",
    "EvalResult",
    "Evaluator",
    "episode_metrics",
    "make_evaluator",
    "reply_thoughts",
]
