"""Pictures for the card games: a 5x7 pixel font, suit pips and card faces drawn with numpy once per
env (at construction), and the small `jnp` helpers that compose them inside jit.

Everything here is deterministic and needs no font file: glyphs are bitmaps written below and scaled
up by whole pixels, so strokes stay crisp at the VLM's input resolution (28 px per merged visual
token; a glyph drawn at scale 3 is 15x21 px, at scale 5 it is 25x35 px).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Color = tuple[int, int, int]

FELT: Color = (53, 101, 77)  # gym_cards' table colour, #35654d
WHITE: Color = (255, 255, 255)
INK: Color = (20, 20, 20)
RED: Color = (200, 30, 30)
BLUE: Color = (30, 70, 200)
BORDER: Color = (60, 60, 60)
BACK: Color = (40, 60, 150)

GLYPH_HEIGHT, GLYPH_WIDTH = 7, 5

# 5x7 bitmaps, "#" = ink. Drawn for this project; only the characters the games show.
_FONT_ROWS: dict[str, tuple[str, ...]] = {
    " ": (".....",) * 7,
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "+": (".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    "*": (".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", "....."),
    "/": (".....", "....#", "...#.", "..#..", ".#...", "#....", "....."),
    "(": ("...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."),
    ")": (".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."),
    "=": (".....", ".....", "#####", ".....", "#####", ".....", "....."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
}

# 7x7 suit pips, in suit-id order: clubs, diamonds, hearts, spades.
SUITS = ("C", "D", "H", "S")
_SUIT_ROWS: tuple[tuple[str, ...], ...] = (
    ("..###..", "..###..", "#######", "#######", "##.#.##", "...#...", "..###.."),
    ("...#...", "..###..", ".#####.", "#######", ".#####.", "..###..", "...#..."),
    (".##.##.", "#######", "#######", "#######", ".#####.", "..###..", "...#..."),
    ("...#...", "..###..", ".#####.", "#######", "#######", "...#...", "..###.."),
)
_RED_SUITS = (1, 2)

# Rank glyphs on the cards: 1 = ace ... 13 = king.
RANK_LABELS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")


def _bitmap(rows: tuple[str, ...]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


def text_mask(text: str, scale: int, spacing: int = 1) -> np.ndarray:
    """bool[7 * scale, width]: `text` in the pixel font, `spacing` font pixels between glyphs."""
    unknown = sorted(set(text) - set(_FONT_ROWS))
    if unknown:
        raise ValueError(f"no glyph for {unknown}; the font has {''.join(sorted(_FONT_ROWS))!r}")
    gap = np.zeros((GLYPH_HEIGHT, spacing), bool)
    parts: list[np.ndarray] = []
    for i, char in enumerate(text):
        if i:
            parts.append(gap)
        parts.append(_bitmap(_FONT_ROWS[char]))
    mask = np.concatenate(parts, axis=1) if parts else np.zeros((GLYPH_HEIGHT, 0), bool)
    return mask.repeat(scale, axis=0).repeat(scale, axis=1)


def suit_mask(suit: int, scale: int) -> np.ndarray:
    return _bitmap(_SUIT_ROWS[suit]).repeat(scale, axis=0).repeat(scale, axis=1)


def filled(height: int, width: int, color: Color) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, np.uint8), (height, width, 3)).copy()


def stamp(image: np.ndarray, mask: np.ndarray, y: int, x: int, color: Color) -> None:
    """Paint `color` where `mask` is true, with the mask's top-left corner at (y, x); in place."""
    h, w = mask.shape
    region = image[y : y + h, x : x + w]
    if region.shape[:2] != (h, w):
        raise ValueError(f"a {h}x{w} stamp at ({y}, {x}) leaves the {image.shape[:2]} image")
    region[mask] = color


def stamp_centered(image: np.ndarray, mask: np.ndarray, cy: int, cx: int, color: Color) -> None:
    stamp(image, mask, cy - mask.shape[0] // 2, cx - mask.shape[1] // 2, color)


def _rounded_rect(height: int, width: int, radius: int) -> np.ndarray:
    """bool[h, w]: a rectangle with rounded corners."""
    y, x = np.mgrid[:height, :width]
    cy = np.clip(y, radius, height - 1 - radius)
    cx = np.clip(x, radius, width - 1 - radius)
    return (y - cy) ** 2 + (x - cx) ** 2 <= radius**2


def _card_outline(height: int, width: int, face: Color, background: Color) -> np.ndarray:
    card = filled(height, width, background)
    card[_rounded_rect(height, width, 6)] = BORDER
    inner = np.zeros((height, width), bool)
    inner[2:-2, 2:-2] = _rounded_rect(height - 4, width - 4, 4)
    card[inner] = face
    return card


def card_face(rank: int, suit: int, height: int, width: int, background: Color) -> np.ndarray:
    """uint8[h, w, 3]: a white card with its rank large in the upper half and its suit pip below."""
    card = _card_outline(height, width, WHITE, background)
    ink = RED if suit in _RED_SUITS else INK
    label = RANK_LABELS[rank - 1]
    scale = max(1, min((width - 12) // 11, (height // 2 - 8) // GLYPH_HEIGHT))  # "10" must fit
    stamp_centered(card, text_mask(label, scale), height * 3 // 10 + 2, width // 2, ink)
    pip = suit_mask(suit, max(1, min(scale, (height // 2 - 8) // 7)))
    stamp_centered(card, pip, height * 3 // 4 - 2, width // 2, ink)
    return card


def card_back(height: int, width: int, background: Color) -> np.ndarray:
    """uint8[h, w, 3]: a face-down card (blue, with a diagonal lattice)."""
    card = _card_outline(height, width, BACK, background)
    y, x = np.mgrid[:height, :width]
    lattice = (((x + y) % 10 < 2) | ((x - y) % 10 < 2)) & (card == np.asarray(BACK)).all(-1)
    inside = np.zeros_like(lattice)
    inside[6:-6, 6:-6] = True
    card[lattice & inside] = (150, 170, 230)
    return card


def card_atlas(height: int, width: int, background: Color) -> np.ndarray:
    """uint8[54, h, w, 3]: tile `card_index(rank, suit)` for the 52 faces, then the back
    (`CARD_BACK`), then an empty slot (`NO_CARD`, plain background)."""
    faces = [card_face(r, s, height, width, background) for r in range(1, 14) for s in range(4)]
    return np.stack(
        [*faces, card_back(height, width, background), filled(height, width, background)]
    )


CARD_BACK, NO_CARD = 52, 53


def card_index(rank: jax.Array, suit: jax.Array) -> jax.Array:
    """Index into `card_atlas` of rank 1..13 and suit 0..3; rank 0 (no card) gives `NO_CARD`."""
    return jnp.where(rank > 0, (rank - 1) * 4 + suit, NO_CARD)


def token_atlas(
    symbols: tuple[str, ...], height: int, width: int, scale: int, ink: Color, background: Color
) -> np.ndarray:
    """uint8[len(symbols) + 1, h, w, 3]: each symbol centred in an h x w cell; the last tile is
    empty (for padding)."""
    tiles = []
    for text in (*symbols, " "):
        tile = filled(height, width, background)
        stamp_centered(tile, text_mask(text, scale), height // 2, width // 2, ink)
        tiles.append(tile)
    return np.stack(tiles)


def text_image(text: str, scale: int, ink: Color, background: Color) -> np.ndarray:
    mask = text_mask(text, scale)
    image = filled(*mask.shape, background)
    image[mask] = ink
    return image


def disk_mask(radius: int, inner: int = -1) -> np.ndarray:
    """bool[2r+1, 2r+1]: a disk of `radius`, hollow inside radius `inner` (a ring) if given."""
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    d2 = y**2 + x**2
    return (d2 <= radius**2) & (d2 > inner**2 if inner >= 0 else True)


# --- inside jit ---------------------------------------------------------------------------------


def paste(canvas: jax.Array, tile: jax.Array, y: int, x: int) -> jax.Array:
    """`tile` over `canvas` at the static position (y, x)."""
    h, w = tile.shape[:2]
    return canvas.at[y : y + h, x : x + w].set(tile)


def paste_mask(
    canvas: jax.Array, mask: np.ndarray, y: jax.Array, x: jax.Array, color: Color
) -> jax.Array:
    """Paint `color` where the static `mask` is true, its top-left at the traced position (y, x)."""
    h, w = mask.shape
    region = jax.lax.dynamic_slice(canvas, (y, x, 0), (h, w, 3))
    region = jnp.where(jnp.asarray(mask)[..., None], jnp.asarray(color, jnp.uint8), region)
    return jax.lax.dynamic_update_slice(canvas, region, (y, x, 0))


def tile_grid(tiles: jax.Array, columns: int, empty: jax.Array) -> jax.Array:
    """Lay `tiles[n, h, w, 3]` out row-major in a grid `columns` wide, padding with `empty[h, w, 3]`:
    returns `[rows * h, columns * w, 3]`."""
    n, h, w, c = tiles.shape
    rows = -(-n // columns)
    pad = jnp.broadcast_to(empty, (rows * columns - n, h, w, c))
    grid = jnp.concatenate([tiles, pad]).reshape(rows, columns, h, w, c)
    return grid.transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)
