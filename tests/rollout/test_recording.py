"""Episode GIFs: frame count and size, the env frame intact on top, the reply drawn in the panel."""

import numpy as np
import pytest
from PIL import Image, ImageSequence

from gtr_turbo_jax.rollout import recording

COLOURS = np.array([[200, 40, 40], [30, 120, 220], [250, 250, 250], [20, 20, 20]], np.uint8)


def block_frames(turns, height=56, width=84, seed=0):
    """Frames of 4x4-pixel blocks in four colours: a GIF palette holds them exactly."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, len(COLOURS), (turns, height // 4, width // 4))
    return COLOURS[ids].repeat(4, axis=1).repeat(4, axis=2)


def read_gif(path):
    image = Image.open(path)
    frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)]
    return image, frames


def test_gif_frames_hold_the_env_frames_and_the_replies(tmp_path):
    frames = block_frames(3)
    replies = ['{"thoughts": "box at (2, 3)", "action": "Up"}', "", "x " * 300]
    path = recording.save_episode_gif(
        tmp_path / "episode.gif", frames, replies, [-0.1, 0, 10], fps=2
    )
    image, decoded = read_gif(path)
    assert image.n_frames == 3 and image.info["loop"] == 0 and image.info["duration"] == 500
    height, width = frames.shape[1:3]
    canvas_width = max(width, 320)
    panel_heights = set()
    for t, frame in enumerate(decoded):
        assert frame.shape[1] == canvas_width and frame.shape[0] > height
        np.testing.assert_array_equal(frame[:height, :width], frames[t])
        assert (frame[:height, width:] == 255).all()  # right of a narrow frame: white
        panel = frame[height:]
        ink = panel.min(axis=-1) < 128
        assert ink.sum() > 50  # the header (turn, reward) at least
        assert not ink[:, -2:].any() and not ink[-2:].any()  # nothing cut at the edges
        panel_heights.add(panel.shape[0])
    # the 600-character reply wraps into many lines: much more ink than the short one
    inked = [(f[height:].min(axis=-1) < 128).sum() for f in decoded]
    assert inked[2] > 5 * inked[0] > 0
    inked_rows = [np.flatnonzero((f[height:].min(axis=-1) < 128).any(axis=1)) for f in decoded]
    assert inked_rows[2].max() > 4 * inked_rows[0].max()


def test_panels_differ_with_the_reply_and_reward(tmp_path):
    frames = np.repeat(block_frames(1), 2, axis=0)
    path = recording.save_episode_gif(tmp_path / "e.gif", frames, ["go left", "go left"], [0, 1])
    image, decoded = read_gif(path)
    assert image.n_frames == 2  # same image and reply: the turn index still tells them apart
    assert not np.array_equal(decoded[0], decoded[1])


def test_long_replies_are_cut_at_max_lines(tmp_path):
    frames = block_frames(1)
    short = recording.episode_frames(frames, ["word " * 1000], max_lines=5)[0]
    tall = recording.episode_frames(frames, ["word " * 1000], max_lines=40)[0]
    assert short.size[1] < tall.size[1]


def test_bad_inputs_are_clear_errors(tmp_path):
    frames = block_frames(2)
    with pytest.raises(ValueError, match="1 replies for 2 frames"):
        recording.save_episode_gif(tmp_path / "a.gif", frames, ["x"])
    with pytest.raises(ValueError, match=r"frames must be uint8\[T, H, W, 3\]"):
        recording.save_episode_gif(tmp_path / "a.gif", frames.astype(np.float32), ["x", "y"])
    with pytest.raises(ValueError, match="fps=0"):
        recording.save_episode_gif(tmp_path / "a.gif", frames, ["x", "y"], fps=0)
    with pytest.raises(FileNotFoundError, match="no directory"):
        recording.save_episode_gif(tmp_path / "missing" / "a.gif", frames, ["x", "y"])
