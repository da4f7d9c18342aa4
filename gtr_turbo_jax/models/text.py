"""The Qwen2 decoder of Qwen2.5-VL: grouped-query attention with multimodal 3-D rotary embedding
(`mrope_section`), SwiGLU MLP, RMSNorm, and a fixed-shape KV cache."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gtr_turbo_jax.models.config import LoRAConfig, TextConfig
from gtr_turbo_jax.models.layers import INIT_STD, GatedMLP, Linear, RMSNorm, apply_rotary, attention


class KVCache(NamedTuple):
    """Keys/values of every layer for a fixed number of slots; a pytree, donate it under jit.

    keys, values: [layers, batch, slots, kv_heads, head_dim] (rotated keys).
    valid: [batch, slots] bool, the slot holds a real (non-padding) token.
    index: [] int32, the next slot to write (shared by all rows: prompts are left-padded).
    next_position: [batch] int32, the rotary position of the row's next text token.
    """

    keys: jax.Array
    values: jax.Array
    valid: jax.Array
    index: jax.Array
    next_position: jax.Array

    @property
    def max_length(self) -> int:
        return self.keys.shape[2]


def init_cache(config: TextConfig, batch: int, max_length: int, dtype: jnp.dtype) -> KVCache:
    shape = (
        config.num_hidden_layers,
        batch,
        max_length,
        config.num_key_value_heads,
        config.head_dim,
    )
    return KVCache(
        keys=jnp.zeros(shape, dtype),
        values=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch, max_length), bool),
        index=jnp.zeros((), jnp.int32),
        next_position=jnp.zeros((batch,), jnp.int32),
    )


def mrope_cos_sin(positions: jax.Array, config: TextConfig) -> tuple[jax.Array, jax.Array]:
    """positions [3, B, T] (temporal, height, width) -> cos, sin [B, T, head_dim] (float32).

    Frequency band i takes its angle from axis 0, 1 or 2 according to `mrope_section`.
    """
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    axis_of_band = np.repeat(np.arange(3), config.mrope_section)  # [dim/2]
    pos = positions.astype(jnp.float32)[axis_of_band]  # [dim/2, B, T]
    angles = jnp.moveaxis(pos, 0, -1) * inv_freq.astype(np.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


class TextAttention(nnx.Module):
    def __init__(self, config: TextConfig, *, path, lora, dtype, param_dtype, rngs) -> None:
        heads, kv_heads, head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        common = dict(lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        size = config.hidden_size
        self.head_dim = head_dim
        self.q_proj = Linear(size, heads * head_dim, path=f"{path}.q_proj", use_bias=True, **common)
        self.k_proj = Linear(
            size, kv_heads * head_dim, path=f"{path}.k_proj", use_bias=True, **common
        )
        self.v_proj = Linear(
            size, kv_heads * head_dim, path=f"{path}.v_proj", use_bias=True, **common
        )
        self.o_proj = Linear(
            heads * head_dim, size, path=f"{path}.o_proj", use_bias=False, **common
        )

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        cache: KVCache | None,
        layer: int,
        dropout_key: jax.Array | None,
    ) -> tuple[jax.Array, KVCache | None]:
        batch, length, _ = x.shape
        q = self.q_proj(x, dropout_key).reshape(batch, length, -1, self.head_dim)
        k = self.k_proj(x, dropout_key).reshape(batch, length, -1, self.head_dim)
        v = self.v_proj(x, dropout_key).reshape(batch, length, -1, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            start = (layer, 0, cache.index, 0, 0)
            keys = jax.lax.dynamic_update_slice(cache.keys, k[None].astype(cache.keys.dtype), start)
            values = jax.lax.dynamic_update_slice(
                cache.values, v[None].astype(cache.values.dtype), start
            )
            cache = cache._replace(keys=keys, values=values)
            k, v = keys[layer].astype(q.dtype), values[layer].astype(q.dtype)
        out = attention(q, k, v, mask).reshape(batch, length, -1)
        return self.o_proj(out, dropout_key), cache


class DecoderLayer(nnx.Module):
    def __init__(self, config: TextConfig, index: int, *, lora, dtype, param_dtype, rngs):
        path = f"language_model.layers.{index}"
        common = dict(lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        norm = dict(eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.index = index
        self.self_attn = TextAttention(config, path=f"{path}.self_attn", **common)
        self.mlp = GatedMLP(
            config.hidden_size,
            config.intermediate_size,
            path=f"{path}.mlp",
            act=config.hidden_act,
            use_bias=False,
            **common,
        )
        self.input_layernorm = RMSNorm(config.hidden_size, **norm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, **norm)

    def __call__(self, x, cos, sin, mask, cache, dropout_key):
        attn, cache = self.self_attn(
            self.input_layernorm(x), cos, sin, mask, cache, self.index, dropout_key
        )
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x), dropout_key), cache


class TextModel(nnx.Module):
    """Token embedding, decoder layers, final norm (the lm_head lives on the parent model)."""

    def __init__(self, config: TextConfig, *, lora: LoRAConfig | None, dtype, param_dtype, rngs):
        self.config = config
        self.dtype = dtype
        self.embed_tokens = _Embedding(
            INIT_STD
            * jax.random.normal(rngs.params(), (config.vocab_size, config.hidden_size), param_dtype)
        )
        self.layers = nnx.List(
            [
                DecoderLayer(config, i, lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for i in range(config.num_hidden_layers)
            ]
        )
        self.norm = RMSNorm(
            config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, param_dtype=param_dtype
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        return jnp.take(self.embed_tokens.weight[...], input_ids, axis=0).astype(self.dtype)

    def __call__(
        self,
        embeds: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array,
        cache: KVCache | None = None,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """embeds [B, T, D], positions [3, B, T], attention_mask [B, T] (1 = real token).

        Without a cache, attention is causal over these T tokens. With one, the T tokens are written
        at slots `cache.index ...` and attend to every valid earlier slot.
        """
        batch, length, _ = embeds.shape
        chex.assert_shape(positions, (3, batch, length))
        chex.assert_shape(attention_mask, (batch, length))
        valid = attention_mask.astype(bool)
        if cache is None:
            causal = np.tril(np.ones((length, length), bool))
            mask = causal[None] & valid[:, None, :]
        else:
            slots = jnp.arange(cache.max_length)
            query_slot = cache.index + jnp.arange(length)
            key_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.index))
            mask = key_valid[:, None, :] & (slots[None, None, :] <= query_slot[None, :, None])
            last_position = jnp.max(jnp.where(valid[None], positions, -1), axis=(0, 2))
            cache = cache._replace(
                valid=key_valid,
                next_position=jnp.maximum(cache.next_position, last_position + 1),
            )
        cos, sin = mrope_cos_sin(positions, self.config)
        x = embeds.astype(self.dtype)
        for layer in self.layers:
            x, cache = layer(x, cos, sin, mask, cache, dropout_key)
        if cache is not None:
            cache = cache._replace(index=cache.index + length)
        return self.norm(x), cache


class _Embedding(nnx.Module):
    def __init__(self, weight: jax.Array) -> None:
        self.weight = nnx.Param(weight)
