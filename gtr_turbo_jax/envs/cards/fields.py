"""The card games' prompt fields read on the host (plain numpy): the expert and the grounding
grammar read them the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

FORMULA_BLANK = "_"  # how a rejected number's blank is written in prompts, thoughts and replies


def field(fields: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in fields:
        raise ValueError(f"fields lack {key!r}; got keys {sorted(fields)}")
    return np.asarray(fields[key])


def scalar(fields: Mapping[str, Any], key: str) -> int:
    return int(field(fields, key))


def formula_tokens(env: Any, fields: Mapping[str, Any]) -> list[str]:
    """The formula so far as tokens of `env` (a formula game), a blank as `FORMULA_BLANK`."""
    ids = field(fields, "formula")[: scalar(fields, "formula_length")]
    return [FORMULA_BLANK if int(i) == env.blank_symbol else env.formula_symbols[i] for i in ids]
