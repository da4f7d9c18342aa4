"""DAgger buffer slots: Algorithm R against a sequential plain-Python transcription, its
uniformity, and the ring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtr_turbo_jax.rl import reservoir_slots, ring_slots


def algorithm_r(buffer, count, rows, uniforms, capacity):
    """Vitter's Algorithm R, one row at a time; `rows` (None: not pushed) in order."""
    buffer = list(buffer)
    for row, u in zip(rows, uniforms):
        if row is None:
            continue
        if count < capacity:
            buffer[count] = row
        else:
            j = min(int(np.floor(np.float32(u) * np.float32(count + 1))), count)
            if j < capacity:
                buffer[j] = row
        count += 1
    return buffer, count


def apply(buffer, rows, slots):
    buffer = list(buffer)
    for row, slot in zip(rows, np.asarray(slots)):
        if slot < len(buffer):
            buffer[slot] = row
    return buffer


@pytest.mark.parametrize("seed", range(4))
def test_batches_of_pushes_equal_one_row_at_a_time(seed):
    rng = np.random.default_rng(seed)
    capacity, count = 5, 0
    fast, slow = [None] * capacity, [None] * capacity
    push = jax.jit(reservoir_slots, static_argnums=2)
    for call in range(6):  # fills the buffer, then replaces (duplicate slots within a call too)
        pushed = rng.random(7) < 0.7
        rows = [(call, i) if p else None for i, p in enumerate(pushed)]
        uniforms = rng.random(7).astype(np.float32)
        slots = push(jnp.int32(count), jnp.asarray(pushed), capacity, jnp.asarray(uniforms))
        fast = apply(fast, rows, slots)
        slow, count = algorithm_r(slow, count, rows, uniforms, capacity)
        assert fast == slow, call


def test_every_row_is_kept_with_the_same_probability():
    capacity, batches, width = 4, 5, 6  # 30 rows through 4 slots
    key = jax.random.key(0)

    def run(key):
        slots, count = [], 0
        for _ in range(batches):
            key, sub = jax.random.split(key)
            u = jax.random.uniform(sub, (width,))
            slots.append(reservoir_slots(jnp.int32(count), jnp.ones(width, bool), capacity, u))
            count += width
        return jnp.stack(slots)

    trials = jax.vmap(run)(jax.random.split(key, 4000))  # [trials, batches, width]
    # A row is in the final buffer when it got a slot no later row took.
    rows = np.asarray(trials).reshape(len(trials), -1)
    kept = np.zeros(rows.shape, bool)
    for t, slots in enumerate(rows):
        last = {}
        for i, s in enumerate(slots):
            if s < capacity:
                last[s] = i
        kept[t, list(last.values())] = True
    rate = kept.mean(0)
    np.testing.assert_allclose(rate, capacity / rows.shape[1], atol=0.035)  # 4 sigma at 4000
    # The ring keeps the last `capacity` rows only: the test can tell the two apart.
    ring = np.asarray(ring_slots(jnp.int32(26), jnp.ones(4, bool), capacity))
    np.testing.assert_array_equal(ring, [2, 3, 0, 1])
