"""Static model configuration: Qwen2.5-VL shapes, LoRA settings, named sizes, HF config.json I/O.

Configs are frozen dataclasses (hashable), so they can sit on NNX modules as static data and be
passed as static arguments to `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax.numpy as jnp

HF_ARCHITECTURE = "Qwen2_5_VLForConditionalGeneration"
HF_MODEL_TYPE = "qwen2_5_vl"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The vision tower (ViT with windowed attention and a 2x2 patch merger)."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    out_hidden_size: int = 3584
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    tokens_per_second: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened pixel patch row (channels x temporal x patch x patch)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The Qwen2 decoder."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    max_position_embeddings: int = 128000
    hidden_act: str = "silu"
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151645
    pad_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Qwen2.5-VL: decoder + vision tower + special token ids + compute/parameter dtypes."""

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False
    dtype: str = "float32"  # activations
    param_dtype: str = "float32"  # base weights (LoRA params are always float32)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(DTYPES[self.dtype])

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(DTYPES[self.param_dtype])

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on linear layers; base weights stay frozen and separate.

    `targets` are regexes matched (fullmatch) against a linear layer's path, e.g.
    `language_model.layers.3.self_attn.q_proj` or `visual.blocks.0.attn.qkv`; a bare module name such
    as `q_proj` also matches by suffix. The default covers every linear layer but `lm_head` (the
    paper's "every linear layer, vision tower included").
    """

    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "qkv",
        "proj",
        "fc1",
        "fc2",
    )
    include_vision: bool = True

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        for target in self.targets:
            re.compile(target)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def applies_to(self, path: str) -> bool:
        if not self.include_vision and path.startswith("visual."):
            return False
        name = path.rsplit(".", 1)[-1]
        return any(re.fullmatch(t, path) or re.fullmatch(t, name) for t in self.targets)


def validate(config: ModelConfig) -> None:
    """Raises ValueError naming the first inconsistent field."""
    text, vision = config.text, config.vision
    for label, dtype in (("dtype", config.dtype), ("param_dtype", config.param_dtype)):
        if dtype not in DTYPES:
            raise ValueError(f"{label}={dtype!r} is not supported; use one of {sorted(DTYPES)}")
    if text.hidden_size % text.num_attention_heads:
        raise ValueError(
            f"text hidden_size={text.hidden_size} is not divisible by "
            f"num_attention_heads={text.num_attention_heads}"
        )
    if text.num_attention_heads % text.num_key_value_heads:
        raise ValueError(
            f"num_attention_heads={text.num_attention_heads} is not a multiple of "
            f"num_key_value_heads={text.num_key_value_heads}"
        )
    if sum(text.mrope_section) * 2 != text.head_dim:
        raise ValueError(
            f"mrope_section={list(text.mrope_section)} must sum to head_dim/2={text.head_dim // 2}"
        )
    if vision.hidden_size % vision.num_heads or vision.head_dim % 4:
        raise ValueError(
            f"vision hidden_size={vision.hidden_size} / num_heads={vision.num_heads} must give a "
            "head_dim divisible by 4 (2-D rotary embedding)"
        )
    if vision.window_size % (vision.spatial_merge_size * vision.patch_size):
        raise ValueError(
            f"vision window_size={vision.window_size} must be a multiple of "
            f"spatial_merge_size*patch_size={vision.spatial_merge_size * vision.patch_size}"
        )
    bad_blocks = [i for i in vision.fullatt_block_indexes if not 0 <= i < vision.depth]
    if bad_blocks:
        raise ValueError(
            f"fullatt_block_indexes {bad_blocks} are outside the vision depth {vision.depth}"
        )
    for label, act in (("text", text.hidden_act), ("vision", vision.hidden_act)):
        if act not in ACTIVATIONS:
            raise ValueError(
                f"{label} hidden_act={act!r} is not supported; use one of {ACTIVATIONS}"
            )


# ---------------------------------------------------------------------------------------------
# Named configurations.

TINY = ModelConfig(
    text=TextConfig(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        mrope_section=(4, 6, 6),
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    ),
    vision=VisionConfig(
        depth=4,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        out_hidden_size=128,
        window_size=56,
        fullatt_block_indexes=(1, 3),
    ),
    image_token_id=6,
    video_token_id=7,
    vision_start_token_id=3,
    vision_end_token_id=4,
    tie_word_embeddings=False,
)

QWEN25_VL_3B = ModelConfig(
    text=TextConfig(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
    ),
    vision=VisionConfig(out_hidden_size=2048),
    tie_word_embeddings=True,
)

QWEN25_VL_7B = ModelConfig(
    text=TextConfig(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
    ),
    vision=VisionConfig(out_hidden_size=3584),
    tie_word_embeddings=False,
)

# One layer each side, width 32: the smallest model that still exercises every code path (GQA,
# windowed + full vision attention, the merger); fast tests and `--quick` benchmarks use it.
MICRO = TINY.replace(
    text=TextConfig(
        vocab_size=1024,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        rope_theta=10000.0,
        mrope_section=(2, 3, 3),
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    ),
    vision=VisionConfig(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=32,
        window_size=56,
        fullatt_block_indexes=(0,),
    ),
)

NAMED_CONFIGS = {
    "micro": MICRO,
    "tiny": TINY,
    "qwen2.5-vl-3b": QWEN25_VL_3B,
    "qwen2.5-vl-7b": QWEN25_VL_7B,
}


def get_config(name: str, **changes: Any) -> ModelConfig:
    """A named configuration (`micro`, `tiny`, `qwen2.5-vl-3b`, `qwen2.5-vl-7b`), optionally with
    changes."""
    if name not in NAMED_CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(NAMED_CONFIGS)}")
    return NAMED_CONFIGS[name].replace(**changes)


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json (transformers v5 nested layout, and the older flat hub layout).

_VISION_KEYS = (
    "depth",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "out_hidden_size",
    "in_channels",
    "patch_size",
    "temporal_patch_size",
    "spatial_merge_size",
    "window_size",
    "fullatt_block_indexes",
    "hidden_act",
    "tokens_per_second",
)
_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "max_position_embeddings",
    "hidden_act",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
_TOP_KEYS = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
)


def from_hf_dict(
    hf: dict[str, Any], *, dtype: str = "float32", source: str = "config"
) -> ModelConfig:
    """Builds a ModelConfig from a parsed HF `config.json` (v5 nested or legacy flat layout)."""
    architectures = hf.get("architectures") or []
    if hf.get("model_type") != HF_MODEL_TYPE and HF_ARCHITECTURE not in architectures:
        raise ValueError(
            f"{source}: model_type={hf.get('model_type')!r}, architectures={architectures} is not "
            f"Qwen2.5-VL; expected model_type {HF_MODEL_TYPE!r} / {HF_ARCHITECTURE}"
        )
    text_hf = dict(hf.get("text_config") or {k: v for k, v in hf.items() if k in _TEXT_KEYS})
    # Legacy flat configs keep rope fields at the top level.
    for key in ("rope_parameters", "rope_scaling", "rope_theta"):
        if key not in text_hf and key in hf:
            text_hf[key] = hf[key]
    if text_hf.get("use_sliding_window", hf.get("use_sliding_window")):
        raise ValueError(
            f"{source}: use_sliding_window=true is not supported (Qwen2.5-VL uses none)"
        )
    rope = dict(text_hf.get("rope_parameters") or text_hf.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(f"{source}: rope_type={rope_type!r} is not supported; expected 'default'")
    text_kwargs = {k: text_hf[k] for k in _TEXT_KEYS if k in text_hf}
    if isinstance(text_kwargs.get("eos_token_id"), list):
        text_kwargs["eos_token_id"] = text_kwargs["eos_token_id"][0]
    text_kwargs["rope_theta"] = float(rope.get("rope_theta", text_hf.get("rope_theta", 1000000.0)))
    if text_kwargs.get("num_key_value_heads") is None:
        text_kwargs["num_key_value_heads"] = text_kwargs["num_attention_heads"]
    text_kwargs["mrope_section"] = tuple(rope.get("mrope_section", (16, 24, 24)))

    vision_hf = dict(hf.get("vision_config") or {})
    vision_kwargs = {k: vision_hf[k] for k in _VISION_KEYS if k in vision_hf}
    vision_kwargs["fullatt_block_indexes"] = tuple(vision_kwargs.get("fullatt_block_indexes", ()))
    vision_rope = vision_hf.get("rope_parameters") or {}
    vision_kwargs["rope_theta"] = float(vision_rope.get("rope_theta", 10000.0))

    tie = bool(hf.get("tie_word_embeddings", text_hf.get("tie_word_embeddings", False)))
    return ModelConfig(
        text=TextConfig(**text_kwargs),
        vision=VisionConfig(**vision_kwargs),
        tie_word_embeddings=tie,
        dtype=dtype,
        param_dtype=dtype,
        **{k: hf[k] for k in _TOP_KEYS if k in hf},
    )


def to_hf_dict(config: ModelConfig, *, torch_dtype: str = "float32") -> dict[str, Any]:
    """The `config.json` transformers v5 writes for this model (nested text/vision configs)."""
    text, vision = config.text, config.vision
    text_hf = {k: getattr(text, k) for k in _TEXT_KEYS}
    text_hf.update(
        model_type="qwen2_5_vl_text",
        rope_parameters={
            "rope_type": "default",
            "rope_theta": text.rope_theta,
            "mrope_section": list(text.mrope_section),
        },
        use_sliding_window=False,
        sliding_window=None,
        attention_dropout=0.0,
    )
    vision_hf = {k: getattr(vision, k) for k in _VISION_KEYS}
    vision_hf.update(
        model_type="qwen2_5_vl_vision",
        fullatt_block_indexes=list(vision.fullatt_block_indexes),
        rope_parameters={"rope_type": "axial", "rope_theta": vision.rope_theta},
    )
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": HF_MODEL_TYPE,
        "dtype": torch_dtype,
        "tie_word_embeddings": config.tie_word_embeddings,
        "text_config": text_hf,
        "vision_config": vision_hf,
        **{k: getattr(config, k) for k in _TOP_KEYS},
    }
