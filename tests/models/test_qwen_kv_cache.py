"""KV-cache decoding (prefill + one token at a time inside jit / lax.while_loop) equals the full
forward; the batched image form equals the HF flat form; left padding leaves rows unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _qwen_cases import GQA, IMAGE, PAD, VISION_END, VISION_START
from flax import nnx

from gtr_turbo_jax.models import from_pretrained
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint

GRID = (1, 4, 4)  # 16 patches -> 4 image tokens per row
N_DECODE = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return from_pretrained(write_random_checkpoint(tmp_path_factory.mktemp("kv"), GQA, seed=11))


@pytest.fixture(scope="module")
def batch():
    """Two left-padded prompts (one image each) followed by N_DECODE reply tokens."""
    rng = np.random.default_rng(0)
    prompts = [
        [1, 20, VISION_START] + [IMAGE] * 4 + [VISION_END, 30, 31, 32],
        [1, VISION_START] + [IMAGE] * 4 + [VISION_END, 40],
    ]
    length = max(map(len, prompts))
    ids = np.full((2, length), PAD, np.int32)
    mask = np.zeros((2, length), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = prompt
        mask[row, length - len(prompt) :] = 1
    reply = rng.integers(8, GQA.text.vocab_size, (2, N_DECODE)).astype(np.int32)
    patches = rng.standard_normal((2, 16, GQA.vision.patch_dim)).astype(np.float32)
    return dict(ids=ids, mask=mask, reply=reply, patches=patches)


@pytest.fixture(scope="module")
def full_logits(model, batch):
    """The uncached forward over prompt + reply (batched image form)."""
    ids = np.concatenate([batch["ids"], batch["reply"]], axis=1)
    mask = np.concatenate([batch["mask"], np.ones_like(batch["reply"])], axis=1)
    forward = nnx.jit(
        lambda m, i, k, p: m.forward(i, k, image_patches=p, image_grid_thw=GRID).logits
    )
    return np.asarray(forward(model, ids, mask, batch["patches"]))


def test_cached_decoding_in_while_loop_equals_full_forward(model, batch, full_logits):
    graphdef, state = nnx.split(model)
    prompt_length = batch["ids"].shape[1]

    @jax.jit
    def generate(state, ids, mask, patches, reply):
        model = nnx.merge(graphdef, state)
        prefill = model.prefill(
            ids, mask, prompt_length + N_DECODE, image_patches=patches, image_grid_thw=GRID
        )
        steps = jnp.zeros((N_DECODE, *prefill.logits.shape[::2]), jnp.float32)

        def body(carry):
            i, cache, steps = carry
            out = nnx.merge(graphdef, state).decode_step(reply[:, i], cache)
            return i + 1, out.cache, steps.at[i].set(out.logits[:, 0])

        _, cache, steps = jax.lax.while_loop(
            lambda c: c[0] < N_DECODE, body, (0, prefill.cache, steps)
        )
        return prefill.logits, steps, cache

    prefill_logits, step_logits, cache = generate(
        state, batch["ids"], batch["mask"], batch["patches"], batch["reply"]
    )
    valid = batch["mask"][..., None] > 0
    np.testing.assert_allclose(
        np.where(valid, prefill_logits, 0),
        np.where(valid, full_logits[:, :prompt_length], 0),
        rtol=0,
        atol=2e-5,
    )
    np.testing.assert_allclose(
        np.moveaxis(np.asarray(step_logits), 0, 1),
        full_logits[:, prompt_length:],
        rtol=0,
        atol=2e-5,
    )
    assert int(cache.index) == prompt_length + N_DECODE
    # Row 0 "1 20 <vs> [2x2 image] <ve> 30 31 32": 0 1 2 [3..4] 5 6 7 8; row 1 "1 <vs> [..] <ve> 40":
    # 0 1 [2..3] 4 5; the image advances positions by max(h, w) = 2.
    np.testing.assert_array_equal(np.asarray(cache.next_position), [9 + N_DECODE, 6 + N_DECODE])


def test_batched_image_form_equals_flat_form(model, batch, full_logits):
    ids = np.concatenate([batch["ids"], batch["reply"]], axis=1)
    mask = np.concatenate([batch["mask"], np.ones_like(batch["reply"])], axis=1)
    flat = nnx.jit(
        lambda m, i, k, p: (
            m.forward(i, k, pixel_values=p, image_grid_thw=np.array([GRID, GRID])).logits
        )
    )
    logits = flat(model, ids, mask, batch["patches"].reshape(-1, batch["patches"].shape[-1]))
    valid = mask[..., None] > 0
    np.testing.assert_allclose(
        np.where(valid, logits, 0), np.where(valid, full_logits, 0), rtol=0, atol=1e-5
    )


def test_left_padding_leaves_a_row_unchanged(model, batch, full_logits):
    """Row 1 alone, unpadded, through the eager HF-style call gives the padded batch's logits."""
    row = 1
    pad = int((batch["mask"][row] == 0).sum())
    ids = np.concatenate([batch["ids"][row, pad:], batch["reply"][row]])[None]
    call = nnx.jit(lambda m, i, p: m(i, p, np.array([GRID])))
    logits = call(model, jnp.asarray(ids), jnp.asarray(batch["patches"][row]))
    np.testing.assert_allclose(np.asarray(logits[0]), full_logits[row, pad:], rtol=0, atol=1e-5)


def test_finished_rows_do_not_advance(model, batch):
    cache = model.init_cache(batch=2, max_length=4)
    step = nnx.jit(lambda m, t, c, v: m.decode_step(t, c, v))
    out = step(model, jnp.array([5, 9]), cache, jnp.array([True, False]))
    np.testing.assert_array_equal(np.asarray(out.cache.valid[:, 0]), [True, False])
    np.testing.assert_array_equal(np.asarray(out.cache.next_position), [1, 0])
    assert int(out.cache.index) == 1


def test_image_token_count_mismatch_is_reported(model, batch):
    ids = jnp.asarray(batch["ids"][1:, 2:])  # row 1 unpadded: 4 image tokens
    with pytest.raises(ValueError, match=r"hold 4 image tokens .* gives 16 merged image tokens"):
        model(ids, jnp.zeros((64, GQA.vision.patch_dim)), np.array([(1, 8, 8)]))
