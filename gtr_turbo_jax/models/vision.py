"""Qwen2.5-VL vision tower: 14-px patches (temporal patch 2), 2-D rotary embedding, windowed
attention with a few full-attention blocks, gated MLPs, RMSNorm, and a 2x2 patch merger.

Image grids are static (Python ints), so every index the tower needs (window permutation, attention
segments, rotary positions) is computed with numpy while tracing and enters the graph as a constant.
Patches are laid out as Qwen2-VL's processor emits them: row-major over 2x2 merge blocks, the four
patches of a block consecutive.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gtr_turbo_jax.models.config import VisionConfig
from gtr_turbo_jax.models.layers import (
    ACTIVATION_FNS,
    INIT_STD,
    GatedMLP,
    Linear,
    RMSNorm,
    apply_rotary,
    attention,
)

Grid = tuple[int, int, int]  # (t, h, w) in patches


def as_grids(image_grid_thw: object) -> tuple[Grid, ...]:
    """Normalises `image_grid_thw` (array / nested sequence of (t, h, w)) to a static tuple."""
    if isinstance(image_grid_thw, jax.core.Tracer):
        raise ValueError(
            "image_grid_thw must be static (numpy or Python ints), not a traced array: image "
            "grids fix the shapes of the vision tower"
        )
    grids = np.asarray(image_grid_thw, dtype=np.int64)
    if grids.ndim == 1:
        grids = grids[None]
    if grids.ndim != 2 or grids.shape[1] != 3 or len(grids) == 0:
        raise ValueError(f"image_grid_thw must have shape [num_images, 3], got {grids.shape}")
    return tuple((int(t), int(h), int(w)) for t, h, w in grids)


@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """Static indexing for one set of image grids (all numpy).

    window_order: merged-unit permutation that makes every attention window contiguous.
    window_segment / image_segment: per patch (in window order), the window / image-frame id.
    rotary_hw: per patch (in window order), its (row, column) in the patch grid.
    """

    window_order: np.ndarray
    window_segment: np.ndarray
    image_segment: np.ndarray
    rotary_hw: np.ndarray

    @property
    def num_patches(self) -> int:
        return len(self.window_segment)


@functools.lru_cache(maxsize=64)
def vision_layout(grids: tuple[Grid, ...], config: VisionConfig) -> VisionLayout:
    merge = config.spatial_merge_size
    unit = merge * merge
    window = config.window_size // merge // config.patch_size  # window side in merged units
    order, window_ids, frame_ids, rows, cols = [], [], [], [], []
    n_windows = n_frames = offset = 0
    for t, h, w in grids:
        if h % merge or w % merge:
            raise ValueError(
                f"image grid {(t, h, w)} is not divisible by spatial_merge_size={merge}"
            )
        gh, gw = h // merge, w // merge
        units = np.arange(t * gh * gw).reshape(t, gh, gw)
        for frame in range(t):
            for r0 in range(0, gh, window):
                for c0 in range(0, gw, window):
                    block = units[frame, r0 : r0 + window, c0 : c0 + window].reshape(-1)
                    order.append(block + offset)
                    window_ids.append(np.full(block.size * unit, n_windows))
                    n_windows += 1
            frame_ids.append(np.full(gh * gw * unit, n_frames))
            n_frames += 1
        # Patch (row, col) in the processor's block-major order, repeated per frame.
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        hh = hh.reshape(gh, merge, gw, merge).transpose(0, 2, 1, 3).reshape(-1)
        ww = ww.reshape(gh, merge, gw, merge).transpose(0, 2, 1, 3).reshape(-1)
        rows.append(np.tile(hh, t))
        cols.append(np.tile(ww, t))
        offset += t * gh * gw
    window_order = np.concatenate(order)
    rotary_hw = np.stack([np.concatenate(rows), np.concatenate(cols)], axis=-1)
    rotary_hw = rotary_hw.reshape(-1, unit, 2)[window_order].reshape(-1, 2)
    return VisionLayout(
        window_order=window_order,
        window_segment=np.concatenate(window_ids),
        image_segment=np.concatenate(frame_ids),  # frames stay contiguous under window_order
        rotary_hw=rotary_hw,
    )


def vision_rotary(layout: VisionLayout, config: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin `[N, head_dim]`: rows rotate the first half, columns the second (repeated twice)."""
    quarter = config.head_dim // 2
    inv_freq = 1.0 / (
        config.rope_theta ** (np.arange(0, quarter, 2, dtype=np.float32) / np.float32(quarter))
    )
    angles = layout.rotary_hw[:, :, None].astype(np.float32) * inv_freq.astype(np.float32)
    angles = angles.reshape(len(angles), -1)  # [N, head_dim/2]: rows then columns
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


class PatchEmbed(nnx.Module):
    """Conv3d with kernel = stride = (temporal_patch, patch, patch) on flattened patches, i.e. a
    matmul; the weight keeps the Conv3d layout `[D, C, tp, p, p]`."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs) -> None:
        shape = (
            config.hidden_size,
            config.in_channels,
            config.temporal_patch_size,
            config.patch_size,
            config.patch_size,
        )
        self.dtype = dtype
        self.proj = _Conv3dWeight(INIT_STD * jax.random.normal(rngs.params(), shape, param_dtype))

    def __call__(self, patches: jax.Array) -> jax.Array:
        weight = self.proj.weight[...]
        weight = weight.reshape(weight.shape[0], -1).astype(self.dtype)
        return jnp.einsum("...p,dp->...d", patches.astype(self.dtype), weight)


class _Conv3dWeight(nnx.Module):
    def __init__(self, weight: jax.Array) -> None:
        self.weight = nnx.Param(weight)


class VisionAttention(nnx.Module):
    def __init__(self, config: VisionConfig, *, path, lora, dtype, param_dtype, rngs) -> None:
        dim = config.hidden_size
        common = dict(use_bias=True, lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads = config.num_heads
        self.qkv = Linear(dim, 3 * dim, path=f"{path}.qkv", **common)
        self.proj = Linear(dim, dim, path=f"{path}.proj", **common)

    def __call__(self, x, cos, sin, mask, dropout_key=None) -> jax.Array:
        batch, length, dim = x.shape
        qkv = self.qkv(x, dropout_key).reshape(batch, length, 3, self.num_heads, -1)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention(q, k, v, mask[None]).reshape(batch, length, dim)
        return self.proj(out, dropout_key)


class VisionBlock(nnx.Module):
    def __init__(self, config: VisionConfig, index: int, *, lora, dtype, param_dtype, rngs):
        path = f"visual.blocks.{index}"
        norm = dict(eps=1e-6, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = RMSNorm(config.hidden_size, **norm)
        self.norm2 = RMSNorm(config.hidden_size, **norm)
        self.attn = VisionAttention(
            config, path=f"{path}.attn", lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.mlp = GatedMLP(
            config.hidden_size,
            config.intermediate_size,
            path=f"{path}.mlp",
            act=config.hidden_act,
            use_bias=True,
            lora=lora,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x, cos, sin, mask, dropout_key=None) -> jax.Array:
        x = x + self.attn(self.norm1(x), cos, sin, mask, dropout_key)
        return x + self.mlp(self.norm2(x), dropout_key)


class PatchMerger(nnx.Module):
    """RMSNorm, then an MLP over each 2x2 block of patches: `[4C] -> 4C -> GELU -> out`."""

    def __init__(self, config: VisionConfig, *, lora, dtype, param_dtype, rngs) -> None:
        width = config.hidden_size * config.spatial_merge_size**2
        common = dict(use_bias=True, lora=lora, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.unit = config.spatial_merge_size**2
        self.ln_q = RMSNorm(config.hidden_size, eps=1e-6, dtype=dtype, param_dtype=param_dtype)
        self.fc1 = Linear(width, width, path="visual.merger.fc1", **common)
        self.fc2 = Linear(width, config.out_hidden_size, path="visual.merger.fc2", **common)

    def __call__(self, x: jax.Array, dropout_key=None) -> jax.Array:
        batch, length, dim = x.shape
        x = self.ln_q(x).reshape(batch, length // self.unit, self.unit * dim)
        return self.fc2(ACTIVATION_FNS["gelu"](self.fc1(x, dropout_key)), dropout_key)


class VisionTower(nnx.Module):
    """Pixel patches -> merged visual tokens in the decoder's width."""

    def __init__(self, config: VisionConfig, *, lora, dtype, param_dtype, rngs) -> None:
        self.config = config
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_embed = PatchEmbed(config, **common)
        self.blocks = nnx.List(
            [VisionBlock(config, i, lora=lora, **common) for i in range(config.depth)]
        )
        self.merger = PatchMerger(config, lora=lora, **common)

    def __call__(
        self,
        patches: jax.Array,
        grids: Sequence[Grid],
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """patches: [B, N, patch_dim], every row holding images with the same static `grids`
        (their patches concatenated). Returns [B, N / merge**2, out_hidden_size]."""
        config = self.config
        layout = vision_layout(tuple(grids), config)
        batch, length, patch_dim = patches.shape
        if length != layout.num_patches or patch_dim != config.patch_dim:
            raise ValueError(
                f"pixel patches have shape {patches.shape[1:]}, but grids {list(grids)} need "
                f"({layout.num_patches}, {config.patch_dim})"
            )
        unit = config.spatial_merge_size**2
        x = self.patch_embed(patches)
        x = x.reshape(batch, -1, unit, x.shape[-1])[:, layout.window_order]
        x = x.reshape(batch, length, -1)
        cos, sin = (jnp.asarray(a) for a in vision_rotary(layout, config))
        full_mask = jnp.asarray(layout.image_segment[:, None] == layout.image_segment[None, :])
        window_mask = jnp.asarray(layout.window_segment[:, None] == layout.window_segment[None, :])
        for index, block in enumerate(self.blocks):
            mask = full_mask if index in config.fullatt_block_indexes else window_mask
            x = block(x, cos, sin, mask, dropout_key)
        merged = self.merger(x, dropout_key)
        return merged[:, np.argsort(layout.window_order)]
