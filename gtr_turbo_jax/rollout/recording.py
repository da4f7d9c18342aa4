"""Episode recording: an animated GIF of the env's frames with the agent's reply under each.

For people to look at (host side, Pillow). Each GIF frame is the env image on top of a white panel
holding the turn index, the reward, and the reply wrapped to the panel's width; every frame gets
the same panel height (the tallest reply's), so the GIF has one size. The frame sits at the top-left;
narrow env images get a wider panel (`min_width`) so replies stay readable.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MARGIN = 4  # pixels around the panel text
INK = (0, 0, 0)
PAPER = (255, 255, 255)


def _line_metrics(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> tuple[int, int]:
    """(character width, line height) of the font, from a wide and tall sample."""
    left, top, right, bottom = font.getbbox("Mg" * 10)
    return max(1, (right - left) // 20), (bottom - top) + 3


def _panel_lines(
    turn: int, turns: int, reply: str, reward: float | None, columns: int, max_lines: int
) -> list[str]:
    header = f"turn {turn + 1}/{turns}" + ("" if reward is None else f"   reward {reward:+.2f}")
    lines = [header]
    for paragraph in reply.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, columns, replace_whitespace=False) or [""]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + ["..."]
    return lines


def episode_frames(
    frames: np.ndarray,
    replies: Sequence[str],
    rewards: Sequence[float] | np.ndarray | None = None,
    min_width: int = 320,
    max_lines: int = 40,
) -> list[Image.Image]:
    """The annotated RGB frames `save_episode_gif` writes (also handy to save one as PNG)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8[T, H, W, 3], got {frames.dtype}{list(frames.shape)}"
        )
    turns, height, width, _ = frames.shape
    if turns == 0:
        raise ValueError("frames is empty: an episode needs at least one frame")
    if len(replies) != turns:
        raise ValueError(f"{len(replies)} replies for {turns} frames: need one reply per frame")
    if rewards is not None and len(rewards) != turns:
        raise ValueError(f"{len(rewards)} rewards for {turns} frames: need one per frame or None")
    if max_lines < 2:
        raise ValueError(f"max_lines={max_lines}: need at least 2 (the header and one line)")
    font = ImageFont.load_default()
    char_width, line_height = _line_metrics(font)
    canvas_width = max(width, min_width)
    columns = max(8, (canvas_width - 2 * MARGIN) // char_width)
    panels = [
        _panel_lines(
            t, turns, replies[t], None if rewards is None else float(rewards[t]), columns, max_lines
        )
        for t in range(turns)
    ]
    panel_height = 2 * MARGIN + line_height * max(len(lines) for lines in panels)
    images = []
    for frame, lines in zip(frames, panels):
        canvas = Image.new("RGB", (canvas_width, height + panel_height), PAPER)
        canvas.paste(Image.fromarray(frame, "RGB"), (0, 0))
        draw = ImageDraw.Draw(canvas)
        for i, line in enumerate(lines):
            draw.text((MARGIN, height + MARGIN + i * line_height), line, fill=INK, font=font)
        images.append(canvas)
    return images


def save_episode_gif(
    path: str | Path,
    frames: np.ndarray,
    replies: Sequence[str],
    rewards: Sequence[float] | np.ndarray | None = None,
    fps: float = 1.0,
    min_width: int = 320,
    max_lines: int = 40,
) -> Path:
    """Write `frames` (`uint8[T, H, W, 3]`, the image each reply answered) with `replies[t]` and
    `rewards[t]` under frame t as a GIF looping forever at `fps` frames per second; returns the path.

    Replies longer than `max_lines` wrapped lines are cut with "...". The turn index is printed on
    every frame, so consecutive frames always differ (Pillow merges identical ones).
    """
    if not fps > 0:
        raise ValueError(f"fps={fps!r}: need a positive number of frames per second")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no directory {str(path.parent)!r} to write {path.name!r} in")
    images = episode_frames(frames, replies, rewards, min_width, max_lines)
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
    )
    return path
