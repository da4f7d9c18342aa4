"""Evaluation metrics on the host: thought collapse, success, and thought grounding.

Pure Python / numpy on data the rollout already returned (decoded thoughts, valid flags, returns,
the env's `prompt_fields`); nothing here runs inside jit.

- `self_bleu`: METHOD.md section 3's thought-collapse measure, NLTK's sentence BLEU (bigram,
  smoothing method 1) of each thought of an episode against the episode's other thoughts.
- `thought_length`, `valid_rate`, `success_rate`, `SuccessTracker`: the other collapse and
  outcome measures (success = episode return > 0, METHOD.md section 5).
- `describe_state` / `grounding`: a small claim grammar about the true state of each env (the env's
  `AgentSpec.grounding`), its writer (for solver-written demonstrations and the oracle teacher) and
  its checker (the fraction of the claims a thought makes that are true). See `GRAMMAR`.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.agent import Grounding

SMOOTHING_EPSILON = 0.1  # NLTK SmoothingFunction().method1: added to zero-count numerators
BLEU_WEIGHTS = (0.5, 0.5)  # unigram and bigram precision
SUCCESS_WINDOW = 200  # METHOD.md section 5: success over the last 200 episodes

Fields = Mapping[str, Any]

# ----------------------------------------------------------------------------------------------
# Thought collapse


def _words(text: str) -> list[str]:
    """Whitespace tokenisation: the same for every model, so runs with different tokenizers
    compare; punctuation stays glued to its word (as NLTK's BLEU on `str.split()` would)."""
    return text.split()


def _ngram_counts(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def sentence_bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """NLTK's `sentence_bleu(references, hypothesis, weights=(0.5, 0.5),
    smoothing_function=SmoothingFunction().method1)` on word lists.

    Clipped n-gram precisions (counts clipped by the largest count in any one reference,
    denominator at least 1); 0 when no unigram matches (NLTK returns before smoothing); a zero
    bigram numerator becomes `SMOOTHING_EPSILON`; brevity penalty against the reference length
    closest to the hypothesis length (the shorter one on a tie).
    """
    if not references:
        raise ValueError("sentence_bleu needs at least one reference")
    log_precision = 0.0
    for n, weight in enumerate(BLEU_WEIGHTS, start=1):
        counts = _ngram_counts(hypothesis, n)
        ceiling: Counter = Counter()
        for reference in references:
            ceiling |= _ngram_counts(reference, n)  # elementwise max over references
        matched = sum(min(c, ceiling[g]) for g, c in counts.items())
        total = max(1, sum(counts.values()))
        if n == 1 and matched == 0:
            return 0.0
        log_precision += weight * math.log((matched or SMOOTHING_EPSILON) / total)
    length = len(hypothesis)
    closest = min((len(r) for r in references), key=lambda r: (abs(r - length), r))
    brevity = 1.0 if length > closest else math.exp(1.0 - closest / length)
    return brevity * math.exp(log_precision)


def self_bleu(thoughts: Sequence[str]) -> float:
    """Mean over the thoughts of one episode of the BLEU of each against all the others.

    Words are whitespace-separated (`str.split`). High means templated thoughts (collapse: 1.0 when
    all are identical); 0 when no thought shares a word with another. An episode with fewer than
    two thoughts has no reference to compare with: the result is `nan` (average episodes with
    `np.nanmean`). Pass the thoughts of the episode's valid replies.
    """
    words = [_words(t) for t in thoughts]
    if len(words) < 2:
        return math.nan
    scores = [sentence_bleu(w, words[:i] + words[i + 1 :]) for i, w in enumerate(words)]
    return float(np.mean(scores))


def thought_length(thoughts: str) -> int:
    """Words (whitespace-separated) in a thought: tokenizer-independent, like `self_bleu`."""
    return len(_words(thoughts))


def _masked_mean(values: np.ndarray, mask: Any | None, name: str) -> float:
    values = np.asarray(values, np.float64)
    if mask is None:
        mask = np.ones(values.shape, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {mask.shape} must equal {name} shape {values.shape}")
    return float(values[mask].mean()) if mask.any() else math.nan


def valid_rate(valid: Any, mask: Any | None = None) -> float:
    """Fraction of valid replies among the turns where `mask` is true (all when None); nan if none."""
    return _masked_mean(np.asarray(valid, bool), mask, "valid")


def success_rate(returns: Any, mask: Any | None = None) -> float:
    """Fraction of finished episodes with return > 0 (METHOD.md section 5); nan if none."""
    return _masked_mean(np.asarray(returns, np.float64) > 0, mask, "returns")


class SuccessTracker:
    """Success rate over the last `window` finished episodes (host side, across updates)."""

    def __init__(self, window: int = SUCCESS_WINDOW):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r}: need a positive int")
        self._successes: deque[bool] = deque(maxlen=window)

    def update(self, returns: Any, done: Any | None = None) -> None:
        """Add episodes: `returns` of finished episodes, or per-step returns with a `done` mask."""
        returns = np.asarray(returns, np.float64).ravel()
        if done is not None:
            done = np.asarray(done, bool).ravel()
            if done.shape != returns.shape:
                raise ValueError(
                    f"done shape {done.shape} must equal returns shape {returns.shape}"
                )
            returns = returns[done]
        self._successes.extend(bool(r > 0) for r in returns)

    @property
    def count(self) -> int:
        return len(self._successes)

    @property
    def rate(self) -> float:
        """nan before the first finished episode."""
        return float(np.mean(self._successes)) if self._successes else math.nan


# ----------------------------------------------------------------------------------------------
# Thought grounding

GRAMMAR = """\
Each env with a grounding grammar (`AgentSpec.grounding`, its module docstring lists the claims)
reads a small set of claims about the true state from a thought (case-insensitive; every claim
counts once), such as "player at (1, 2)" or "cards: 3, 8, 10, 1". The full reply formats' JSON keys
read the same way, so a whole reply can be checked, not only its thoughts.
`describe_state` writes every claim of a state in the env's grammar; `grounding` returns the
fraction of a thought's claims that are true, None when it makes none."""


def has_grounding(env_name: str) -> bool:
    """Whether the env has a grounding grammar (`AgentSpec.grounding`)."""
    return envs.agent_spec(env_name).grounding is not None


def _grammar(env_name: str) -> Grounding:
    spec = envs.agent_spec(env_name)
    if spec.grounding is None:
        raise ValueError(f"no grounding grammar for env {env_name!r} (its AgentSpec has none)")
    return spec.grounding


def describe_state(env_name: str, fields: Fields) -> str:
    """Every claim `GRAMMAR` allows about one state (`env.prompt_fields` of it, unbatched)."""
    return _grammar(env_name).describe(envs.default_env(env_name), fields)


def grounding_claims(env_name: str, thoughts: str, fields: Fields) -> list[bool]:
    """Truth of each claim `thoughts` makes about the state, in the order of `GRAMMAR`'s kinds."""
    return _grammar(env_name).claims(envs.default_env(env_name), thoughts, fields)


def grounding(env_name: str, thoughts: str, fields: Fields) -> float | None:
    """Fraction of the claims in `thoughts` that are true of the state; None if it makes none."""
    claims = grounding_claims(env_name, thoughts, fields)
    return sum(claims) / len(claims) if claims else None


def mean_grounding(scores: Iterable[float | None]) -> float:
    """Mean over the thoughts that made a claim; nan when none did."""
    made = [s for s in scores if s is not None]
    return float(np.mean(made)) if made else math.nan
