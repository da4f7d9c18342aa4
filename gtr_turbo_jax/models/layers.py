"""Building blocks shared by the vision tower and the decoder.

Weights keep Hugging Face's layout (`Linear.weight` is `[out, in]`, like `torch.nn.Linear`), so the
safetensors name map is a pure renaming and loading never transposes or copies a tensor.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gtr_turbo_jax.models.config import LoRAConfig

INIT_STD = 0.02  # transformers' initializer_range
Activation = Callable[[jax.Array], jax.Array]

ACTIVATION_FNS: dict[str, Activation] = {
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


class Linear(nnx.Module):
    """`y = x W^T + b`, plus an optional LoRA delta `(dropout(x) A B) * alpha / r`.

    `path` is the layer's dotted name in the model (e.g. `visual.blocks.0.attn.qkv`); LoRA targets
    are matched against it, and it seeds the layer's dropout stream.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        path: str,
        use_bias: bool,
        lora: LoRAConfig | None,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ) -> None:
        self.path = path
        self.dtype = dtype
        self.weight = nnx.Param(
            INIT_STD * jax.random.normal(rngs.params(), (out_features, in_features), param_dtype)
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None
        use_lora = lora is not None and lora.applies_to(path)
        lora_a = lora_b = None
        if use_lora:
            # Kaiming-uniform A and zero B, as PEFT: the adapter starts as the identity.
            bound = (3.0 / in_features) ** 0.5
            lora_a = nnx.LoRAParam(
                jax.random.uniform(
                    rngs.params(), (in_features, lora.rank), jnp.float32, -bound, bound
                )
            )
            lora_b = nnx.LoRAParam(jnp.zeros((lora.rank, out_features), jnp.float32))
        self.lora_a, self.lora_b = lora_a, lora_b
        self.lora_scale = lora.scale if use_lora else 0.0
        self.lora_dropout = lora.dropout if use_lora else 0.0
        self.lora_stream = zlib.crc32(path.encode()) & 0x7FFFFFFF

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        x = x.astype(self.dtype)
        y = jnp.einsum("...i,oi->...o", x, self.weight[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora_a is not None:
            h = x
            if dropout_key is not None and self.lora_dropout > 0.0:
                key = jax.random.fold_in(dropout_key, self.lora_stream)
                keep = jax.random.bernoulli(key, 1.0 - self.lora_dropout, h.shape)
                h = jnp.where(keep, h / (1.0 - self.lora_dropout), 0).astype(self.dtype)
            down = h @ self.lora_a[...].astype(self.dtype)
            y = y + (down @ self.lora_b[...].astype(self.dtype)) * self.lora_scale
        return y

    def merged_weight(self) -> jax.Array:
        """The base weight with the LoRA delta folded in (`[out, in]`, the base weight's dtype)."""
        weight = self.weight[...]
        if self.lora_a is None:
            return weight
        delta = (self.lora_a[...] @ self.lora_b[...]).T * self.lora_scale
        return (weight.astype(jnp.float32) + delta).astype(weight.dtype)


class RMSNorm(nnx.Module):
    """RMS normalisation computed in float32, scaled by a learned weight (T5 / Qwen style)."""

    def __init__(self, size: int, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype) -> None:
        self.eps = eps
        self.dtype = dtype
        self.weight = nnx.Param(jnp.ones((size,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * normed.astype(self.dtype)


class GatedMLP(nnx.Module):
    """`down(act(gate(x)) * up(x))`: SwiGLU in the decoder, the same with biases in the ViT."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        *,
        path: str,
        act: str,
        use_bias: bool,
        lora: LoRAConfig | None,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ) -> None:
        def linear(name: str, n_in: int, n_out: int) -> Linear:
            return Linear(
                n_in,
                n_out,
                path=f"{path}.{name}",
                use_bias=use_bias,
                lora=lora,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )

        self.act = act
        self.gate_proj = linear("gate_proj", hidden_size, intermediate_size)
        self.up_proj = linear("up_proj", hidden_size, intermediate_size)
        self.down_proj = linear("down_proj", intermediate_size, hidden_size)

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        if dropout_key is None:
            gate, up = fused_projection((self.gate_proj, self.up_proj), x)
        else:
            gate, up = self.gate_proj(x, dropout_key), self.up_proj(x, dropout_key)
        return self.down_proj(ACTIVATION_FNS[self.act](gate) * up, dropout_key)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates `x [..., T, H, D]` by angles whose cos/sin are `[..., T, D]` (float32 math)."""
    x32 = x.astype(jnp.float32)
    cos, sin = cos[..., None, :], sin[..., None, :]
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query softmax attention.

    q: [B, T, H, D]; k, v: [B, S, K, D] with H a multiple of K; mask: bool, broadcastable to
    [B, T, S] (True = may attend). Logits and softmax in float32. Returns [B, T, H, D].
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits * head_dim**-0.5
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, length, heads, head_dim)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`attention` against a KV cache laid out heads first.

    q: [B, T, H, D]; k, v: [B, K, S, D]; mask: bool [B, T, S]. Returns [B, T, H, D].
    One query (a decode step) is a matrix-vector product per head, which XLA:CPU runs much faster
    as a fused multiply-reduce than as a library matmul call; longer queries use matmuls.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    q = q.reshape(batch, length, kv_heads, groups, head_dim).transpose(0, 2, 1, 3, 4)
    q = q.reshape(batch, kv_heads, length * groups, head_dim)
    mask = jnp.repeat(mask, groups, axis=1)[:, None]  # [B, 1, T * G, S], query q = t * G + g
    if length == 1:
        logits = jnp.sum(
            q.astype(jnp.float32)[:, :, :, None, :] * k.astype(jnp.float32)[:, :, None], axis=-1
        )
    else:
        logits = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    logits = jnp.where(mask, logits * head_dim**-0.5, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    if length == 1:
        out = jnp.sum(probs[..., None] * v[:, :, None], axis=3)
    else:
        out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    out = out.reshape(batch, kv_heads, length, groups, head_dim).transpose(0, 2, 1, 3, 4)
    return out.reshape(batch, length, heads, head_dim)


def fused_projection(linears: Sequence[Linear], x: jax.Array) -> list[jax.Array]:
    """`[linear(x) for linear in linears]` (no dropout) as one matmul, plus two for LoRA.

    Linears sharing an input (q/k/v, gate/up) are stacked along their outputs; their LoRA
    adapters likewise, `B` as a block-diagonal matrix. The stacking depends on parameters only,
    so inside a decode loop XLA hoists it out of the loop body.
    """
    first = linears[0]
    x = x.astype(first.dtype)
    sizes = [linear.weight.shape[0] for linear in linears]
    weight = jnp.concatenate([linear.weight[...].astype(first.dtype) for linear in linears])
    y = jnp.einsum("...i,oi->...o", x, weight)
    if any(linear.bias is not None for linear in linears):
        bias = [
            jnp.zeros((size,), first.dtype) if linear.bias is None else linear.bias[...]
            for linear, size in zip(linears, sizes, strict=True)
        ]
        y = y + jnp.concatenate(bias).astype(first.dtype)
    adapted = [linear for linear in linears if linear.lora_a is not None]
    if adapted:
        if len({linear.lora_scale for linear in adapted}) != 1:
            raise ValueError("fused_projection needs one LoRA scale for all its linears")
        down = jnp.concatenate([linear.lora_a[...] for linear in adapted], axis=1)
        blocks, row = [], 0
        for linear, size in zip(linears, sizes, strict=True):
            block = jnp.zeros((down.shape[1], size), jnp.float32)
            if linear.lora_a is not None:
                rank = linear.lora_b.shape[0]
                block = block.at[row : row + rank].set(linear.lora_b[...])
                row += rank
            blocks.append(block)
        up = jnp.concatenate(blocks, axis=1).astype(first.dtype)
        y = y + ((x @ down.astype(first.dtype)) @ up) * adapted[0].lora_scale
    return jnp.split(y, np.cumsum(sizes)[:-1], axis=-1)
