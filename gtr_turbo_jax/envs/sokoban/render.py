"""Sokoban pictures: a sprite atlas drawn once with numpy, gathered per cell (JAX or numpy).

One tile per cell id (`levels.GRID_SYMBOLS` order). At the default 28 px a tile is exactly one
merged visual token of Qwen2.5-VL (14 px patches, 2x2 merge). Sprites are flat shapes in
saturated, well separated colours: brick walls, pale floor, a red ring for a target, a brown crate,
a green crate on a target, a blue player (inside the red ring when on a target).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gtr_turbo_jax.envs.sokoban.levels import (
    BOX,
    BOX_ON_TARGET,
    FLOOR,
    GRID_SYMBOLS,
    PLAYER,
    PLAYER_ON_TARGET,
    TARGET,
    WALL,
)

_FLOOR_RGB = (236, 232, 218)
_FLOOR_EDGE_RGB = (212, 206, 190)
_BRICK_RGB = (150, 72, 48)
_MORTAR_RGB = (92, 88, 84)
_TARGET_RGB = (222, 30, 40)
_CRATE_RGB, _CRATE_DARK_RGB = (214, 150, 60), (120, 72, 24)
_DONE_RGB, _DONE_DARK_RGB = (70, 190, 80), (24, 100, 36)
_PLAYER_RGB, _PLAYER_DARK_RGB = (40, 90, 230), (16, 36, 120)


def _paint(tile: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int]) -> None:
    tile[mask] = rgb


def make_atlas(tile_size: int = 28) -> np.ndarray:
    """`uint8[7, tile_size, tile_size, 3]`: the sprite of each cell id."""
    if not isinstance(tile_size, (int, np.integer)) or tile_size < 8:
        raise ValueError(f"tile_size must be an int >= 8 pixels, got {tile_size!r}")
    t = int(tile_size)
    # Pixel centres in tile units, so every sprite scales with the tile.
    y, x = (np.mgrid[0:t, 0:t] + 0.5) / t
    radius = np.hypot(y - 0.5, x - 0.5)
    px = 1.0 / t

    floor = np.empty((t, t, 3), np.uint8)
    _paint(floor, np.ones((t, t), bool), _FLOOR_RGB)
    _paint(floor, (y < px) | (x < px), _FLOOR_EDGE_RGB)  # faint grid lines between cells

    wall = np.empty((t, t, 3), np.uint8)
    _paint(wall, np.ones((t, t), bool), _BRICK_RGB)
    course = np.floor(y * 4).astype(int)  # four courses of bricks, alternate ones offset
    joint = ((x + 0.25 * (course % 2)) % 0.5) < 1.5 * px
    _paint(wall, ((y * 4) % 1.0 < 1.5 * px * 4) | joint, _MORTAR_RGB)

    ring = (radius > 0.30) & (radius < 0.42)
    target = floor.copy()
    _paint(target, ring, _TARGET_RGB)

    def crate(light: tuple[int, int, int], dark: tuple[int, int, int]) -> np.ndarray:
        tile = floor.copy()
        inside = (np.abs(y - 0.5) < 0.40) & (np.abs(x - 0.5) < 0.40)
        border = inside & ((np.abs(y - 0.5) > 0.32) | (np.abs(x - 0.5) > 0.32))
        cross = inside & ((np.abs(y - x) < 1.2 * px * 2) | (np.abs(y + x - 1) < 1.2 * px * 2))
        _paint(tile, inside, light)
        _paint(tile, border | cross, dark)
        return tile

    def player(base: np.ndarray) -> np.ndarray:
        tile = base.copy()
        head = np.hypot(y - 0.29, x - 0.5) < 0.16
        body = (np.hypot((y - 0.80) / 1.2, x - 0.5) < 0.30) & (y < 0.86)
        eyes = (np.hypot(y - 0.27, x - 0.44) < 0.035) | (np.hypot(y - 0.27, x - 0.56) < 0.035)
        _paint(tile, head | body, _PLAYER_RGB)
        _paint(tile, eyes, (255, 255, 255))
        _paint(tile, body & (np.abs(y - 0.70) < px), _PLAYER_DARK_RGB)  # belt
        return tile

    atlas = np.empty((len(GRID_SYMBOLS), t, t, 3), np.uint8)
    atlas[WALL] = wall
    atlas[FLOOR] = floor
    atlas[TARGET] = target
    atlas[BOX_ON_TARGET] = crate(_DONE_RGB, _DONE_DARK_RGB)
    atlas[BOX] = crate(_CRATE_RGB, _CRATE_DARK_RGB)
    atlas[PLAYER] = player(floor)
    atlas[PLAYER_ON_TARGET] = player(target)
    return atlas


def tile_grid(atlas: jax.Array, grid: jax.Array) -> jax.Array:
    """`uint8[rows * T, cols * T, 3]` image of an `int[rows, cols]` grid of cell ids (jittable)."""
    rows, cols = grid.shape
    tiles = atlas[grid.astype(jnp.int32)]  # [rows, cols, T, T, 3]
    t = atlas.shape[1]
    return tiles.transpose(0, 2, 1, 3, 4).reshape(rows * t, cols * t, 3)


def tile_grid_np(atlas: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """numpy twin of `tile_grid`, for the pure-Python env."""
    rows, cols = grid.shape
    t = atlas.shape[1]
    tiles = atlas[np.asarray(grid, np.int64)]
    return tiles.transpose(0, 2, 1, 3, 4).reshape(rows * t, cols * t, 3)
