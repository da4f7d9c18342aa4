"""The live training success rate (`train.live`): episodes counted by the update they started in,
reported by complete cohorts; hand-worked cases, resume, old checkpoints, and the bias of the old
window of ended episodes that it replaces."""

from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest

from gtr_turbo_jax.train import trainer
from gtr_turbo_jax.train.live import SUCCESS_WINDOW, UNTRACKED, LiveWindow, advance

# Hand-worked: 2 envs, 3 turns per update. Env 0 plays one long failed episode (5 turns: update 0
# turn 0 to update 1 turn 1), then a 2-turn solved one (update 1 turn 2 to update 2 turn 0), then
# one still running. Env 1 plays 1-turn solved episodes, one per turn. Returns say which episode
# is which: 10 * start update + start turn, + 0.5 for env 1; negative for the failed one.
T, F = True, False
UPDATES = [
    # (returned_episode, success, episode_return), [turn, env]
    ([[F, T], [F, T], [F, T]], [[F, T], [F, T], [F, T]], [[0, 0.5], [0, 1.5], [0, 2.5]]),
    ([[F, T], [T, T], [F, T]], [[F, T], [F, T], [F, T]], [[0, 10.5], [-1, 11.5], [0, 12.5]]),
    ([[T, T], [F, T], [F, T]], [[T, T], [F, T], [F, T]], [[12, 20.5], [0, 21.5], [0, 22.5]]),
]


def run(updates, window):
    """The window after each update (a list), from `window`."""
    out = []
    for update, arrays in enumerate(updates):
        window = advance(window, update, *map(np.asarray, arrays))
        out.append(window)
    return out


def ended_window(updates, size=SUCCESS_WINDOW):
    """The old estimate: the success rate of the last `size` episodes that ENDED, per update."""
    successes = collections.deque(maxlen=size)
    rates = []
    for returned, success, _ in updates:
        returned = np.asarray(returned, bool)
        successes.extend(np.asarray(success, bool)[returned].tolist())
        rates.append(float(np.mean(successes)) if successes else math.nan)
    return rates


def test_hand_worked_cohorts():
    first, second, third = run(UPDATES, LiveWindow.fresh(2))
    # Update 0: env 0's long episode (cohort 0) is still running: nothing is reported, where the
    # ended-episode window already says 3/3 (only env 1's short solved episodes have ended).
    assert first.starts == ((0, 0), (1, 0))
    assert math.isnan(first.success_rate) and math.isnan(first.return_mean)
    assert [e[:3] for e in first.pending] == [(0, 0, 1), (0, 1, 1), (0, 2, 1)]
    # Update 1: env 0's long episode ends at turn 1 -> cohort 0 complete: the failed long episode
    # and the three short solved ones, by (start update, start turn, env).
    assert second.starts == ((1, 2), (2, 0))
    assert second.returns == (-1.0, 0.5, 1.5, 2.5)
    assert second.successes == (F, T, T, T)
    assert second.success_rate == 0.75 and second.return_mean == pytest.approx(3.5 / 4)
    # Cohort 1 has ended on env 1 but not on env 0 (started at turn 2): pending, not reported.
    assert [e[:3] for e in second.pending] == [(1, 0, 1), (1, 1, 1), (1, 2, 1)]
    # Update 2: env 0's 2-turn episode (started update 1 turn 2) ends -> cohort 1 complete; in
    # start order, env 0's episode before env 1's of the same turn although it ended later.
    assert third.starts == ((2, 1), (3, 0))
    assert third.returns == (-1.0, 0.5, 1.5, 2.5, 10.5, 11.5, 12.0, 12.5)
    assert third.success_rate == 7 / 8
    assert [e[:3] for e in third.pending] == [(2, 0, 1), (2, 1, 1), (2, 2, 1)]
    # The old window: 3/3, then 6/7, then 10/11: it counts the short solved episodes first.
    assert ended_window(UPDATES) == [1.0, 6 / 7, 10 / 11]


def test_window_keeps_the_most_recent_starts():
    *_, third = run(UPDATES, LiveWindow.fresh(2, size=3))
    assert third.returns == (11.5, 12.0, 12.5) and third.success_rate == 1.0
    _, second, _ = run(UPDATES, LiveWindow.fresh(2, size=3))
    assert second.returns == (0.5, 1.5, 2.5)  # cut inside cohort 0: its latest starts


def test_an_episode_ending_on_the_last_turn_starts_the_next_update():
    ended = [[F], [F], [T]]
    window = advance(LiveWindow.fresh(1), 0, ended, ended, [[0.0], [0.0], [1.0]])
    assert window.starts == ((1, 0),) and window.successes == (T,)  # cohort 0 complete at once


def test_group_rollouts_count_each_envs_first_episode_at_once():
    # restart=True: every update resets every env. Env 0 solves in 1 turn and then solves a
    # second, 1-turn episode (cut from the count: short episodes only would bias it); env 1 fails
    # after 3 turns. Both first episodes are reported after the same update.
    returned = [[T, F], [T, F], [F, T]]
    success = [[T, F], [T, F], [F, F]]
    got = [[1.0, 0.0], [2.0, 0.0], [0.0, -3.0]]
    window = advance(LiveWindow.fresh(2), 0, returned, success, got, restart=True)
    assert window.successes == (T, F) and window.returns == (1.0, -3.0)
    assert window.starts == ((1, 0), (1, 0)) and window.pending == ()
    # Without restart the stream's second episode of env 0 is counted too (2 of 3 solved), once
    # env 0's third episode (still open) has ended.
    stream = advance(LiveWindow.fresh(2), 0, returned, success, got)
    assert [e[3] for e in stream.pending] == [T, T, F]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"returned_episode must be \[turns, 2\]"):
        advance(LiveWindow.fresh(2), 0, np.zeros((3, 1), bool), np.zeros((3, 1)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="must match returned_episode"):
        advance(LiveWindow.fresh(2), 0, np.zeros((3, 2), bool), np.zeros((3, 2)), np.zeros((2, 2)))


def test_resumed_from_the_host_dict_is_exact():
    """Through the checkpoint's JSON after every update: the same windows, bit for bit."""
    straight = run(UPDATES, LiveWindow.fresh(2))
    window = LiveWindow.fresh(2)
    for update, arrays in enumerate(UPDATES):
        host = json.loads(json.dumps({"update": update, **window.to_host()}))
        window = advance(LiveWindow.from_host(host, 2), update, *map(np.asarray, arrays))
        assert window == straight[update]


def test_old_checkpoint_without_episode_starts():
    """A host dict of the old window: its values start the window; the envs' running episodes
    (starts unknown) are left out, the episodes that start after the resume are counted."""
    old = {"update": 1, "successes": [True] * 70, "returns": [1.0] * 70}
    window = LiveWindow.from_host(old, 2, size=64)
    assert window.starts == ((UNTRACKED, 0),) * 2 and len(window.successes) == 64
    assert LiveWindow.from_host({"update": 0}, 2).successes == ()
    # Resumed at update 1 of the hand-worked case: env 0's long and env 1's first episode there
    # are not counted; cohort 1 completes at update 2 as before.
    _, third = run(UPDATES[1:], LiveWindow.from_host({"successes": [], "returns": []}, 2))
    assert third.returns == (11.5, 12.0, 12.5)  # update 1: (1,1) and (1,2) of env 1, (1,2) of env 0
    # A host dict for another number of envs falls back the same way.
    new = LiveWindow.fresh(3).to_host()
    assert LiveWindow.from_host(new, 2).starts == ((UNTRACKED, 0),) * 2


def test_a_restart_drops_the_open_episodes_and_completes_their_cohorts():
    """A Python env resumed at update 2 of the hand-worked case starts new games: env 0's
    episode open since update 1 turn 2 is dropped (not counted in cohort 1 when the new game
    ends), cohort 1 completes with the rest, the new game belongs to cohort 2."""
    straight = run(UPDATES, LiveWindow.fresh(2))
    checkpoint = json.loads(json.dumps(straight[1].to_host()))
    resumed = LiveWindow.from_host(checkpoint, 2).restart(2)
    assert resumed.starts == ((2, 0), (2, 0))
    after = advance(resumed, 2, *map(np.asarray, UPDATES[2]))
    new_part = straight[1].returns + (10.5, 11.5, 12.5)  # cohort 1 without env 0's open episode
    assert straight[2].returns == straight[1].returns + (10.5, 11.5, 12.0, 12.5)
    assert after.returns == new_part
    assert (2, 0, 0, True, 12.0) in after.pending  # env 0's new game: cohort 2


def test_unbiased_where_the_ended_episode_window_is_not():
    """Short solved and long failed episodes, half each (success 0.5 per episode), 3 turns per
    update, 32 envs: pooled over 200 streams, the old window of the episodes that ended reads 1.0
    after the first update (only short ones have ended) and stays well above 0.5 while the long
    ones catch up; the cohort window reports nothing until cohort 0 is complete (its episodes
    started at turn 2 end in update 2) and 0.5 from then on."""
    envs, turns, updates, p = 32, 3, 6, 0.5
    successes, counts = np.zeros((2, updates)), np.zeros((2, updates))
    for seed in range(200):
        stream_ = stream(envs, turns, updates, seed, p_short=p)
        old = collections.deque(maxlen=SUCCESS_WINDOW)
        windows = run(stream_, LiveWindow.fresh(envs))
        for update, ((returned, success, _), window) in enumerate(zip(stream_, windows)):
            old.extend(success[returned].tolist())
            successes[:, update] += sum(old), sum(window.successes)
            counts[:, update] += len(old), len(window.successes)
    old_rate, new_rate = successes / counts.clip(min=1)
    assert old_rate[0] == 1.0 and all(old_rate[:3] > p + 0.1), old_rate
    assert counts[1, 0] == 0 and counts[1, 1] < 0.01 * counts[1, 2]  # nan until complete
    # ~10,000 episodes per point from update 2 on (standard error 0.005; correlated across
    # updates, which share the streams)
    assert np.all(np.abs(new_rate[2:] - p) < 0.02), new_rate
    # One long stream, every completed episode (no window cut): within 0.02 of p.
    stream_ = stream(400, turns, 8, seed=0, p_short=p)
    everything = run(stream_, LiveWindow.fresh(400, size=10**6))[-1]
    assert len(everything.successes) > 2000
    assert abs(everything.success_rate - p) < 0.02
    assert everything.return_mean == everything.success_rate  # return 1 exactly when solved


def stream(num_envs, turns, updates, seed, p_short=0.5, long_length=5):
    """A stationary stream of episodes: each is short (1 turn, solved, return 1) with probability
    `p_short`, else long (`long_length` turns, failed, return 0), so the success rate per episode
    is `p_short`. The per-turn (returned_episode, success, episode_return) of every update."""
    rng = np.random.default_rng(seed)
    draw = lambda: np.where(rng.random(num_envs) < p_short, 1, long_length)
    length = draw()
    elapsed = np.zeros(num_envs, int)
    out = []
    for _ in range(updates):
        returned = np.zeros((turns, num_envs), bool)
        success = np.zeros((turns, num_envs), bool)
        for turn in range(turns):
            elapsed += 1
            ended = elapsed == length
            returned[turn], success[turn] = ended, ended & (length == 1)
            length = np.where(ended, draw(), length)
            elapsed = np.where(ended, 0, elapsed)
        out.append((returned, success, success.astype(np.float64)))
    return out


def test_trainer_host_entries_and_window():
    """The trainer's window is 200 episodes; `_episode_stats` advances the host's window and
    counts the episodes that ended."""
    assert trainer.SUCCESS_WINDOW == SUCCESS_WINDOW == 200
    returned, success, returns = map(np.asarray, UPDATES[0])
    episodes = {"returned_episode": returned, "success": success, "episode_return": returns}
    window, ended = trainer._episode_stats(episodes, LiveWindow.fresh(2), 0)
    assert ended == 3 and window == run(UPDATES[:1], LiveWindow.fresh(2))[0]
    assert set(window.to_host()) == {"successes", "returns", "episode_starts", "pending_episodes"}
