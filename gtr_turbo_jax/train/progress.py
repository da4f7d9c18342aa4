"""What a long run shows while it works: a progress bar, and seconds spent per phase."""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Any


class Bar:
    """A tqdm progress bar (stderr) with a postfix of the live figures."""

    def __init__(self, total: int, label: str):
        from tqdm.auto import tqdm

        self._tqdm = tqdm(total=total, desc=label, dynamic_ncols=True, leave=True)

    def advance(self, count: int) -> None:
        if count:
            self._tqdm.update(count)

    def step(self, count: int = 1, shown: dict[str, Any] | None = None) -> None:
        if shown:
            self._tqdm.set_postfix(
                {k: f"{v:.3f}" for k, v in shown.items() if v is not None}, refresh=False
            )
        self._tqdm.update(count)

    def close(self) -> None:
        self._tqdm.close()


class Timings:
    """Seconds spent per phase of the loop, summed (`with timings("rollout"): ...`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self._last: dict[str, float] = {}

    def lap(self) -> dict[str, float]:
        """Seconds per phase since the previous lap."""
        since = {k: v - self._last.get(k, 0.0) for k, v in self.seconds.items()}
        self._last = dict(self.seconds)
        return since

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


__all__ = ["Bar", "Timings"]
