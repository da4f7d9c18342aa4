"""JAX Qwen2-VL image preprocessing against transformers' image processor (PIL backend)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    smart_resize as hf_smart_resize,
)

from gtr_turbo_jax.text import image as gi
from gtr_turbo_jax.text.tokenizer import load_processor, tiny_tokenizer_path

# One grey level after normalisation: the largest step a rounding difference can make.
ONE_LEVEL = 1 / 255 / min(gi.OPENAI_CLIP_STD)


@pytest.fixture(scope="module")
def hf_image_processor():
    return load_processor(tiny_tokenizer_path()).image_processor


@pytest.fixture(scope="module")
def config():
    return gi.ImageConfig.from_pretrained(tiny_tokenizer_path())


@pytest.fixture(scope="module")
def jit_preprocess():
    return jax.jit(gi.preprocess_image, static_argnums=1)


def _render_like(height: int, width: int, seed: int) -> np.ndarray:
    """Flat 7-px tiles plus noise: edges and gradients like our renders, no structure to hide in."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, size=(height // 7 + 1, width // 7 + 1, 3))
    image = np.repeat(np.repeat(tiles, 7, 0), 7, 1)[:height, :width]
    return np.clip(image + rng.integers(-20, 21, size=image.shape), 0, 255).astype(np.uint8)


def test_config_matches_the_hf_processor(config, hf_image_processor):
    hf = hf_image_processor
    assert (config.patch_size, config.temporal_patch_size, config.merge_size) == (
        hf.patch_size,
        hf.temporal_patch_size,
        hf.merge_size,
    )
    assert (config.min_pixels, config.max_pixels) == (hf.size.shortest_edge, hf.size.longest_edge)
    assert config.image_mean == tuple(hf.image_mean) and config.image_std == tuple(hf.image_std)
    # Qwen2.5-VL's published defaults.
    assert (config.patch_size, config.temporal_patch_size, config.merge_size) == (14, 2, 2)
    assert (config.min_pixels, config.max_pixels) == (56 * 56, 28 * 28 * 16384)


@pytest.mark.parametrize(
    "height,width",
    [
        (1, 1),
        (27, 29),
        (42, 42),
        (100, 150),
        (168, 168),
        (250, 250),
        (300, 200),
        (4000, 20),
        (2000, 3000),
    ],
)
@pytest.mark.parametrize("max_pixels", [28 * 28 * 16, 28 * 28 * 1280])
def test_smart_resize_matches_transformers(height, width, max_pixels):
    ours = gi.smart_resize(height, width, 28, 56 * 56, max_pixels)
    assert ours == tuple(hf_smart_resize(height, width, 28, 56 * 56, max_pixels))


def test_smart_resize_half_rounds_to_even():
    # 42 / 28 = 1.5 and 70 / 28 = 2.5: Python's round goes to the even neighbour (2, 2).
    assert gi.smart_resize(42, 70, 28, 28 * 28, 10**9) == (56, 56)


def test_bad_aspect_ratio_and_image_raise():
    with pytest.raises(ValueError, match="aspect ratio"):
        gi.smart_resize(10, 2500)
    with pytest.raises(ValueError, match=r"uint8\[H, W, 3\]"):
        gi.preprocess_image(jnp.zeros((56, 56, 4), jnp.uint8))
    with pytest.raises(ValueError, match=r"uint8\[H, W, 3\]"):
        gi.preprocess_image(jnp.zeros((56, 56, 3), jnp.float32))


@pytest.mark.parametrize(
    "height,width",
    [(168, 168), (224, 112), (56, 84)],  # Sokoban 6x6 at 28 px, non-square, the smallest sizes
)
def test_no_resize_matches_transformers_exactly(
    height, width, config, hf_image_processor, jit_preprocess
):
    image = _render_like(height, width, seed=height + width)
    ref = hf_image_processor(images=[image], return_tensors="np")
    ours = jit_preprocess(jnp.asarray(image), config)
    assert ours.pixel_values.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(ours.image_grid_thw), ref["image_grid_thw"])
    np.testing.assert_allclose(
        np.asarray(ours.pixel_values), ref["pixel_values"], rtol=0, atol=1e-5
    )


def test_resize_matches_transformers_within_rounding(config, hf_image_processor, jit_preprocess):
    """100x150 -> 112x140 (grow one side, shrink the other): PIL's fixed-point bicubic differs
    from ours by at most two grey levels on a few pixels."""
    image = _render_like(100, 150, seed=7)
    ref = hf_image_processor(images=[image], return_tensors="np")
    ours = jit_preprocess(jnp.asarray(image), config)
    np.testing.assert_array_equal(np.asarray(ours.image_grid_thw), [[1, 8, 10]])
    np.testing.assert_array_equal(np.asarray(ours.image_grid_thw), ref["image_grid_thw"])
    diff = np.abs(np.asarray(ours.pixel_values) - ref["pixel_values"])
    assert diff.max() <= 2 * ONE_LEVEL + 1e-5
    assert np.mean(diff > 1e-5) < 0.01


def test_patch_order_by_hand(config, jit_preprocess):
    """Patch (row r, col c) of a 56x84 image, value 10*r + c: rows of pixel_values walk the 2x2
    merge blocks (block row, block col, row in block, col in block); every entry of a row is its
    patch's value (channels x frames x 14 x 14)."""
    rows, cols = 4, 6
    values = 10 * np.arange(rows)[:, None] + np.arange(cols)[None, :]
    image = np.repeat(np.repeat(values, 14, 0), 14, 1)[..., None].repeat(3, -1).astype(np.uint8)
    out = jit_preprocess(jnp.asarray(image), config)
    expected_order = [
        10 * (2 * br + r) + (2 * bc + c)
        for br in range(rows // 2)
        for bc in range(cols // 2)
        for r in range(2)
        for c in range(2)
    ]
    mean = np.repeat(np.asarray(config.image_mean), 2 * 14 * 14)
    std = np.repeat(np.asarray(config.image_std), 2 * 14 * 14)
    pixel_values = np.asarray(out.pixel_values)
    assert pixel_values.shape == (rows * cols, 3 * 2 * 14 * 14)
    recovered = pixel_values * std + mean  # back to [0, 1]: (channel, frame, y, x) per row
    expected = np.broadcast_to(np.asarray(expected_order, float)[:, None], recovered.shape)
    np.testing.assert_allclose(recovered * 255, expected, atol=1e-3)


def test_batched_equals_per_image(config, hf_image_processor):
    images = np.stack([_render_like(112, 168, seed=s) for s in range(3)])
    batched = jax.jit(gi.preprocess_images, static_argnums=1)(jnp.asarray(images), config)
    assert batched.pixel_values.shape == (3, 8 * 12, 1176)
    ref = hf_image_processor(images=list(images), return_tensors="np")
    np.testing.assert_array_equal(np.asarray(batched.image_grid_thw), ref["image_grid_thw"])
    np.testing.assert_allclose(
        np.asarray(batched.pixel_values).reshape(-1, 1176), ref["pixel_values"], rtol=0, atol=1e-5
    )


def test_num_image_tokens(config):
    assert gi.num_image_tokens(168, 168, config) == 36  # one token per 28-px Sokoban cell
    assert gi.image_grid_thw(224, 112, config) == (1, 16, 8)
    assert gi.num_image_tokens(100, 150, config) == 8 * 10 // 4
