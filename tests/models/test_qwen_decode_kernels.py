"""The decode step's kernels against the general ones they replace: `fused_projection` against
separate `Linear` calls (with LoRA on some of them), `cached_attention` against `attention`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gtr_turbo_jax.models.config import LoRAConfig
from gtr_turbo_jax.models.layers import Linear, attention, cached_attention, fused_projection


def test_fused_projection_equals_separate_linears_with_partial_lora():
    lora = LoRAConfig(rank=4, alpha=8.0, dropout=0.0, targets=("q_proj", "v_proj"))
    rngs = nnx.Rngs(0)
    common = dict(lora=lora, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    linears = [
        Linear(16, 8, path="a.q_proj", use_bias=True, **common),
        Linear(16, 4, path="a.k_proj", use_bias=False, **common),
        Linear(16, 4, path="a.v_proj", use_bias=True, **common),
    ]
    for linear in linears:  # non-zero adapters and biases, so every term counts
        if linear.lora_b is not None:
            linear.lora_b[...] = jax.random.normal(rngs.params(), linear.lora_b.shape)
        if linear.bias is not None:
            linear.bias[...] = jax.random.normal(rngs.params(), linear.bias.shape)
    assert [linear.lora_a is not None for linear in linears] == [True, False, True]
    x = jax.random.normal(jax.random.key(1), (3, 2, 16))
    fused = fused_projection(linears, x)
    for linear, y in zip(linears, fused, strict=True):
        expected = np.asarray(x) @ np.asarray(linear.weight[...]).T
        if linear.bias is not None:
            expected = expected + np.asarray(linear.bias[...])
        if linear.lora_a is not None:
            delta = np.asarray(linear.lora_a[...]) @ np.asarray(linear.lora_b[...])
            expected = expected + np.asarray(x) @ delta * lora.scale
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(y), np.asarray(linear(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 3])
def test_cached_attention_equals_attention(length):
    batch, slots, heads, kv_heads, dim = 2, 5, 4, 2, 8
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (batch, length, heads, dim))
    k = jax.random.normal(keys[1], (batch, slots, kv_heads, dim))
    v = jax.random.normal(keys[2], (batch, slots, kv_heads, dim))
    mask = jax.random.bernoulli(keys[3], 0.7, (batch, length, slots)).at[:, :, 0].set(True)
    expected = attention(q, k, v, mask)
    got = cached_attention(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
