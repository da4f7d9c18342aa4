"""Qwen2-VL image preprocessing in JAX: `uint8[H, W, 3]` -> `pixel_values`, `image_grid_thw`.

The same output as transformers' Qwen2-VL image processor (`Qwen2VLImageProcessorPil`):
1. resize to `smart_resize(H, W)` (both sides multiples of patch_size * merge_size, pixel count in
   [min_pixels, max_pixels]); skipped when the size already fits, which is the case for our renders
   (multiples of 28), so usually no resize happens and the output matches to float rounding;
2. rescale by 1/255 and normalise with the CLIP mean/std;
3. repeat the frame `temporal_patch_size` times (a still image is a clip of identical frames);
4. cut into `patch_size` patches ordered so that the `merge_size x merge_size` blocks that the
   vision tower merges into one token are contiguous: rows of `pixel_values` run over
   (block row, block col, row in block, col in block) and each row is (channel, frame, y, x).

The shapes are static (computed on the host from the image shape and the config), so every
function here is jittable with `config` static. When a resize is needed it uses
`jax.image.resize` bicubic (Keys a=-0.5, antialiased when shrinking), one axis at a time with
rounding to uint8 in between as PIL does; PIL's fixed-point arithmetic still makes about one
grey level of difference on some pixels (<= ~0.03 after normalisation), so resized images match
transformers only approximately.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageConfig:
    """Static preprocessing settings (Qwen2.5-VL's defaults); hashable, so a jit static argument."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 16384
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        """Side lengths are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ImageConfig:
        """Read `preprocessor_config.json` of a model directory (or the file itself)."""
        path = Path(path)
        file = path / "preprocessor_config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no preprocessor_config.json at {str(path)!r}")
        raw = json.loads(file.read_text(encoding="utf-8"))
        size = raw.get("size") or {}
        # Pixel bounds are stored either flat (Qwen's checkpoints) or as size edges (transformers).
        min_pixels = raw.get("min_pixels", size.get("shortest_edge", cls.min_pixels))
        max_pixels = raw.get("max_pixels", size.get("longest_edge", cls.max_pixels))
        return cls(
            patch_size=int(raw.get("patch_size", cls.patch_size)),
            temporal_patch_size=int(raw.get("temporal_patch_size", cls.temporal_patch_size)),
            merge_size=int(raw.get("merge_size", cls.merge_size)),
            min_pixels=int(min_pixels),
            max_pixels=int(max_pixels),
            image_mean=tuple(float(v) for v in raw.get("image_mean", cls.image_mean)),
            image_std=tuple(float(v) for v in raw.get("image_std", cls.image_std)),
            rescale_factor=float(raw.get("rescale_factor", cls.rescale_factor)),
        )


class ImagePatches(NamedTuple):
    pixel_values: jax.Array  # float32[N, patch_dim] ([B, N, patch_dim] batched); N = t * h * w
    image_grid_thw: jax.Array  # int32[1, 3] ([B, 3] batched): (t, h, w) in patches


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, pixel count in [min_pixels, max_pixels],
    aspect ratio kept as closely as possible. Host-side; the same rounding as transformers'
    (Python's `round`, half to even; floor when shrinking, ceil when growing)."""
    if min(height, width) < 1:
        raise ValueError(f"image size must be positive, got height={height} width={width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"aspect ratio must be at most 200, got {max(height, width) / min(height, width)} "
            f"for height={height} width={width}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_shape(height: int, width: int, config: ImageConfig = ImageConfig()) -> tuple[int, int]:
    return smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)


def image_grid_thw(
    height: int, width: int, config: ImageConfig = ImageConfig()
) -> tuple[int, int, int]:
    """(t, h, w) patch grid of an image of this size (host-side, static)."""
    h, w = resized_shape(height, width, config)
    return 1, h // config.patch_size, w // config.patch_size


def num_image_tokens(height: int, width: int, config: ImageConfig = ImageConfig()) -> int:
    """Number of `<|image_pad|>` tokens (merged patches) for an image of this size."""
    t, h, w = image_grid_thw(height, width, config)
    return t * h * w // config.merge_size**2


def _resize_axis(image: jax.Array, axis: int, size: int) -> jax.Array:
    """Bicubic resize of one axis of a float image holding uint8 values, rounded back to uint8."""
    if image.shape[axis] == size:
        return image
    shape = list(image.shape)
    shape[axis] = size
    out = jax.image.resize(image, tuple(shape), method="bicubic", antialias=True)
    return jnp.clip(jnp.round(out), 0, 255)


def resize_image(image: jax.Array, height: int, width: int) -> jax.Array:
    """uint8[H, W, C] -> uint8[height, width, C], bicubic; width first, then height (as PIL)."""
    if image.shape[:2] == (height, width):
        return image
    out = _resize_axis(image.astype(jnp.float32), 1, width)
    out = _resize_axis(out, 0, height)
    return out.astype(jnp.uint8)


def patchify(image: jax.Array, config: ImageConfig = ImageConfig()) -> jax.Array:
    """float[H, W, C] (sides multiples of `config.factor`) -> [h * w, C * T * p * p] in
    transformers' order: merge blocks contiguous, each row (channel, frame, y, x)."""
    chex.assert_rank(image, 3)
    height, width, channels = image.shape
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    chex.assert_equal((height % (p * m), width % (p * m)), (0, 0))
    bh, bw = height // (p * m), width // (p * m)
    blocks = image.reshape(bh, m, p, bw, m, p, channels)
    # -> (block row, block col, row in block, col in block, channel, y, x)
    blocks = blocks.transpose(0, 3, 1, 4, 6, 2, 5)
    frames = jnp.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], t, p, p))
    return frames.reshape(bh * bw * m * m, channels * t * p * p)


def preprocess_image(image: jax.Array, config: ImageConfig = ImageConfig()) -> ImagePatches:
    """uint8[H, W, 3] -> `ImagePatches` (`pixel_values` float32[N, D], `image_grid_thw` int32[1, 3])."""
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != jnp.uint8:
        raise ValueError(
            f"expected an RGB image uint8[H, W, 3], got {image.dtype}{list(image.shape)}"
        )
    height, width = resized_shape(image.shape[0], image.shape[1], config)
    resized = resize_image(image, height, width)
    # Same operation order as transformers: x * (1/255), then (x - mean) / std, in float32.
    scaled = resized.astype(jnp.float32) * jnp.float32(config.rescale_factor)
    mean = jnp.asarray(config.image_mean, jnp.float32)
    std = jnp.asarray(config.image_std, jnp.float32)
    pixel_values = patchify((scaled - mean) / std, config)
    grid = jnp.asarray([image_grid_thw(image.shape[0], image.shape[1], config)], jnp.int32)
    return ImagePatches(pixel_values, grid)


def preprocess_images(images: jax.Array, config: ImageConfig = ImageConfig()) -> ImagePatches:
    """uint8[B, H, W, 3] (one size) -> `pixel_values` float32[B, N, D], `image_grid_thw` int32[B, 3]."""
    if images.ndim != 4:
        raise ValueError(
            f"expected a batch of RGB images uint8[B, H, W, 3], got shape {images.shape}"
        )
    patches = jax.vmap(lambda image: preprocess_image(image, config))(images)
    return ImagePatches(patches.pixel_values, patches.image_grid_thw[:, 0])
