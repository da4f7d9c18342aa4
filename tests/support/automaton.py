"""Walking a token automaton's table on the host, for the constrained-decoding tests."""

from __future__ import annotations

import numpy as np


def feed(table: np.ndarray, tokens: list[int]) -> int:
    """The state `next_state[S, V]` reaches from state 0 over `tokens`, or -1 once one is refused."""
    state = 0
    for token in tokens:
        state = int(table[state, token])
        if state < 0:
            return -1
    return state
