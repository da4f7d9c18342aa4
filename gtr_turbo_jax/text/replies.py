"""Reply parsing on decoded text (METHOD.md section 1): the host-side reference rules.

A reply is JSON whose last key is `"action"`, e.g. `{"thoughts": "...", "action": "Up"}`.
- *valid*: the reply parses as a JSON object with the required keys (strings).
- the action: in the text after the last `"action":`, find which legal action strings occur. Longer
  strings are matched first and their occurrences removed, so "10" is not also read as "1". Exactly one
  distinct legal action -> that action, `legal=True`; otherwise a uniformly random legal action,
  `legal=False`.
The compiled rollout parses token ids inside jit with the same rules; this module is what it is
checked against.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ACTION_MARKER = '"action":'


@dataclass(frozen=True)
class ParsedReply:
    action: int  # index into the legal action names
    legal: bool  # exactly one legal action string after the marker
    valid: bool  # JSON object with the required keys
    thoughts: str  # the "thoughts" value, or "" when the reply is not valid


def matched_actions(text: str, action_names: Sequence[str]) -> list[int]:
    """Ids of the distinct legal actions that occur in `text` after the last action marker."""
    start = text.rfind(ACTION_MARKER)
    if start < 0:
        return []
    tail = text[start + len(ACTION_MARKER) :]
    found = []
    for i in sorted(range(len(action_names)), key=lambda i: -len(action_names[i])):
        if action_names[i] in tail:
            found.append(i)
            tail = tail.replace(action_names[i], "\0")
    return sorted(found)


def is_valid_reply(text: str, required_keys: Sequence[str] = ("thoughts", "action")) -> bool:
    try:
        reply = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(reply, dict) and all(isinstance(reply.get(k), str) for k in required_keys)


def parse_reply(
    text: str,
    action_names: Sequence[str],
    rng: np.random.Generator,
    required_keys: Sequence[str] = ("thoughts", "action"),
) -> ParsedReply:
    """The action, legality and validity of one reply; `rng` draws the fallback action."""
    found = matched_actions(text, action_names)
    legal = len(found) == 1
    action = found[0] if legal else int(rng.integers(len(action_names)))
    valid = is_valid_reply(text, required_keys)
    thoughts = json.loads(text).get("thoughts", "") if valid and "thoughts" in required_keys else ""
    return ParsedReply(action=action, legal=legal, valid=valid, thoughts=thoughts)
