"""The live training success rate and return: episodes counted by the update they started in.

The rollout is a continuous stream: every env resets automatically, so an episode can start in one
update and end several updates later. A window of the episodes that ENDED is biased towards short
episodes: in the first updates only the short ones (in Sokoban: the solved ones) have ended, so
such a curve starts high and falls while the agent improves. Here every episode belongs to the
cohort of the update it started in, and a cohort enters the window only once it has completed
(every episode that started in it has ended) and every earlier cohort has too. The window holds
the most recent (up to) `SUCCESS_WINDOW` episodes of the completed cohorts, ordered by (start
update, start turn, env): episodes chosen by when they started, not by how long they ran.
Admitting a later cohort before an earlier one completes would bring the bias back (a cohort whose
episodes are all short completes first). The price is a lag of about one episode length: an
update's episodes are reported once its longest episode has ended. What lengths still decide is
only the update at which a cohort is first reported (an update earlier when its episodes happen
to be short), which can tilt the first values of a run with few envs; once the window holds a
few cohorts it is the plain per-episode average (tests/train/test_live.py simulates both).

Everything is plain Python data (`LiveWindow.to_host` / `from_host`: JSON for the checkpoint's
metadata), so a resumed run carries on with the same numbers. `advance` is the pure step: the
carried window and one rollout's per-turn `returned_episode`, `success` and `episode_return`
(`[turns, envs]`) in, the new window out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

SUCCESS_WINDOW = 200  # RL4VLM / GTR: success over the last 200 (completed) episodes
UNTRACKED = -1  # start update of an episode whose start is unknown (resumed old checkpoint)


@dataclasses.dataclass(frozen=True)
class LiveWindow:
    """The carried bookkeeping of the live success rate.

    - `starts`: per env, `(update, turn)` at which its current (open) episode started; update
      `UNTRACKED` when unknown (that episode is dropped when it ends).
    - `pending`: ended episodes of cohorts not reported yet, `(start_update, start_turn, env,
      success, return)`, in the order they ended.
    - `successes`, `returns`: the reported window, oldest first (at most `size` episodes).
    """

    starts: tuple[tuple[int, int], ...]
    pending: tuple[tuple[int, int, int, bool, float], ...] = ()
    successes: tuple[bool, ...] = ()
    returns: tuple[float, ...] = ()
    size: int = SUCCESS_WINDOW

    @classmethod
    def fresh(cls, num_envs: int, size: int = SUCCESS_WINDOW) -> LiveWindow:
        """The start of training: every env starts an episode at update 0, turn 0."""
        return cls(starts=((0, 0),) * num_envs, size=size)

    @property
    def success_rate(self) -> float:
        """Fraction of successes in the window; NaN until a cohort has completed."""
        return float(np.mean(self.successes)) if self.successes else math.nan

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else math.nan

    def to_host(self) -> dict[str, Any]:
        """The JSON-ready entries of the trainer's host dict (checkpoint metadata)."""
        return {
            "successes": [bool(s) for s in self.successes],
            "returns": [float(r) for r in self.returns],
            "episode_starts": [[int(u), int(t)] for u, t in self.starts],
            "pending_episodes": [
                [int(u), int(t), int(e), bool(s), float(r)] for u, t, e, s, r in self.pending
            ],
        }

    def restart(self, update: int) -> LiveWindow:
        """Every env starts a new episode at turn 0 of `update`: a resumed Python env, whose games
        start afresh (its checkpoint holds no env state). The episodes open at the checkpoint never
        end, so they are dropped; the cohorts before `update` then complete with the episodes that
        ended before it."""
        return dataclasses.replace(self, starts=((update, 0),) * len(self.starts))

    @classmethod
    def from_host(
        cls, host: Mapping[str, Any], num_envs: int, size: int = SUCCESS_WINDOW
    ) -> LiveWindow:
        """The window a host dict holds. A checkpoint written before episodes were counted by
        their start (no `episode_starts`, or one for another number of envs) keeps its reported
        window as the start of the new one; the envs' current episodes, whose starts it does not
        know, are left out when they end, and counting by start begins with the episodes that
        start after the resume."""
        successes = tuple(bool(s) for s in host.get("successes", ()))[-size:]
        returns = tuple(float(r) for r in host.get("returns", ()))[-size:]
        starts = host.get("episode_starts")
        if starts is None or len(starts) != num_envs:
            starts, pending = ((UNTRACKED, 0),) * num_envs, ()
        else:
            pending = host.get("pending_episodes", ())
        return cls(
            starts=tuple((int(u), int(t)) for u, t in starts),
            pending=tuple((int(u), int(t), int(e), bool(s), float(r)) for u, t, e, s, r in pending),
            successes=successes,
            returns=returns,
            size=size,
        )


def advance(
    window: LiveWindow,
    update: int,
    returned_episode: Any,
    success: Any,
    episode_return: Any,
    restart: bool = False,
) -> LiveWindow:
    """The window after update `update`'s rollout.

    `returned_episode`, `success`, `episode_return`: `[turns, envs]` per-turn arrays of that
    rollout (the latter two read where an episode was returned). The env that returns an episode
    at turn `t` starts its next one at turn `t + 1` of the same stream (turn 0 of the next update
    after the last turn). After the rollout, the cohorts before the oldest open (tracked)
    episode's start update are complete; their ended episodes move from `pending` to the window in
    (start update, start turn, env) order, and the window keeps the last `window.size`.
    `restart`: the rollout resets every env at its start (group rollouts), so only each env's
    first episode of the rollout counts; the episodes it started later are cut by the next reset
    and dropped (counting them would bring back the bias towards short episodes).
    """
    returned = np.asarray(returned_episode, bool)
    won = np.asarray(success, bool)
    got = np.asarray(episode_return, np.float64)
    if returned.ndim != 2 or returned.shape[1] != len(window.starts):
        raise ValueError(
            f"returned_episode must be [turns, {len(window.starts)}], got {returned.shape}"
        )
    if won.shape != returned.shape or got.shape != returned.shape:
        raise ValueError(
            f"success {won.shape} and episode_return {got.shape} must match returned_episode "
            f"{returned.shape}"
        )
    turns = returned.shape[0]
    starts = [(update, 0)] * len(window.starts) if restart else list(window.starts)
    pending = list(window.pending)
    for turn, env in zip(*np.nonzero(returned)):  # turn-major: the order the episodes ended
        start_update, start_turn = starts[env]
        if restart and (start_update, start_turn) != (update, 0):
            continue
        if start_update != UNTRACKED:
            pending.append(
                (start_update, start_turn, int(env), bool(won[turn, env]), float(got[turn, env]))
            )
        starts[env] = (update, int(turn) + 1) if turn + 1 < turns else (update + 1, 0)
    if restart:
        starts = [(update + 1, 0)] * len(starts)
    tracked = [u for u, _ in starts if u != UNTRACKED]
    complete_before = min(tracked) if tracked else update + 1  # cohorts < this have all ended
    done = sorted(e for e in pending if e[0] < complete_before)
    successes = (window.successes + tuple(e[3] for e in done))[-window.size :]
    returns = (window.returns + tuple(e[4] for e in done))[-window.size :]
    return dataclasses.replace(
        window,
        starts=tuple(starts),
        pending=tuple(e for e in pending if e[0] >= complete_before),
        successes=successes,
        returns=returns,
    )


__all__ = ["SUCCESS_WINDOW", "UNTRACKED", "LiveWindow", "advance"]
