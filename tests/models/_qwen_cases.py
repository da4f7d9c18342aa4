"""Parity cases shared by the live PyTorch tests, the stored-reference tests and the script that
regenerates the references (make_qwen_reference.py). Everything is derived from seeds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from gtr_turbo_jax.models.config import ModelConfig, TextConfig, VisionConfig

REFERENCE_DIR = Path(__file__).parent / "qwen_reference"
IMAGE, VISION_START, VISION_END, PAD = 6, 3, 4, 0

SPECIAL_IDS = dict(
    image_token_id=6, video_token_id=7, vision_start_token_id=3, vision_end_token_id=4
)

# Grouped-query attention (4 heads, 2 kv heads), untied head, windows of 2x2 merged tokens.
GQA = ModelConfig(
    text=TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        mrope_section=(1, 1, 2),
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    ),
    vision=VisionConfig(
        depth=3,
        hidden_size=32,
        intermediate_size=48,
        num_heads=2,
        out_hidden_size=32,
        window_size=56,
        fullatt_block_indexes=(1,),
    ),
    **SPECIAL_IDS,
)
# Multi-head attention, tied embeddings, windows of 4x4 merged tokens, another mrope split.
TIED = dataclasses.replace(
    GQA,
    text=dataclasses.replace(
        GQA.text, num_attention_heads=2, num_key_value_heads=2, mrope_section=(2, 3, 3)
    ),
    vision=dataclasses.replace(
        GQA.vision, depth=2, window_size=112, fullatt_block_indexes=(0,), hidden_act="gelu"
    ),
    tie_word_embeddings=True,
)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    config: ModelConfig
    seed: int
    rows: tuple[tuple[tuple[str, object], ...], ...]  # per row: ("text", n) / ("image", (t, h, w))
    pad_left: tuple[int, ...] = ()  # left padding per row (batch then padded to a common length)

    @property
    def grids(self) -> np.ndarray:
        grids = [g for row in self.rows for kind, g in row if kind == "image"]
        return np.asarray(grids, np.int64).reshape(-1, 3)


CASES = (
    Case("text_gqa", GQA, 1, ((("text", 12),), (("text", 12),))),
    Case("text_tied_mha", TIED, 2, ((("text", 15),),)),
    Case("one_image", GQA, 3, ((("text", 3), ("image", (1, 8, 8)), ("text", 4)),)),
    Case(
        "two_images_windowed",
        GQA,
        4,
        ((("text", 2), ("image", (1, 8, 12)), ("text", 3), ("image", (1, 4, 6)), ("text", 2)),),
    ),
    Case(
        "images_tied_window4",
        TIED,
        5,
        ((("text", 2), ("image", (1, 12, 8)), ("text", 1), ("image", (1, 6, 10)), ("text", 3)),),
    ),
    Case(
        "padded_batch_images",
        GQA,
        6,
        (
            (("text", 2), ("image", (1, 4, 4)), ("text", 5)),
            (("text", 4), ("image", (1, 4, 4)), ("text", 1)),
        ),
        pad_left=(0, 2),
    ),
)
CASES_BY_NAME = {case.name: case for case in CASES}


def make_inputs(case: Case) -> dict[str, np.ndarray]:
    """input_ids, attention_mask [B, T]; pixel_values [patches, patch_dim]; image_grid_thw."""
    rng = np.random.default_rng(case.seed)
    vocab = case.config.text.vocab_size
    merge = case.config.vision.spatial_merge_size
    rows = []
    for row in case.rows:
        ids = [1]
        for kind, value in row:
            if kind == "text":
                ids += rng.integers(8, vocab, value).tolist()
            else:
                t, h, w = value
                ids += [VISION_START] + [IMAGE] * (t * h * w // merge**2) + [VISION_END]
        rows.append(ids)
    pads = case.pad_left or (0,) * len(rows)
    length = max(len(r) + p for r, p in zip(rows, pads))
    input_ids = np.full((len(rows), length), PAD, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for i, (ids, pad) in enumerate(zip(rows, pads)):
        fill = length - len(ids)  # left padding (pad >= requested when rows differ in length)
        assert fill >= pad
        input_ids[i, fill:] = ids
        mask[i, fill:] = 1
    grids = case.grids
    n_patches = int(grids.prod(axis=1).sum())
    pixels = rng.standard_normal((n_patches, case.config.vision.patch_dim)).astype(np.float32)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grids)


def reference_path(case: Case) -> Path:
    return REFERENCE_DIR / f"{case.name}.npz"


def torch_logits(case: Case, checkpoint_dir: Path) -> np.ndarray:
    """transformers' PyTorch model on the case (float32, eager attention)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        checkpoint_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    inputs = make_inputs(case)
    kwargs = dict(
        input_ids=torch.tensor(inputs["input_ids"]),
        attention_mask=torch.tensor(inputs["attention_mask"]),
    )
    if len(inputs["image_grid_thw"]):
        kwargs.update(
            pixel_values=torch.tensor(inputs["pixel_values"]),
            image_grid_thw=torch.tensor(inputs["image_grid_thw"]),
            mm_token_type_ids=torch.tensor((inputs["input_ids"] == IMAGE).astype(np.int64)),
        )
    with torch.no_grad():
        logits = model(**kwargs).logits.numpy()
    return np.where(inputs["attention_mask"][..., None] > 0, logits, 0.0).astype(np.float32)


def our_logits(case: Case, checkpoint_dir: Path) -> np.ndarray:
    """Our model, loaded from the same checkpoint, on the case (zeros at padding positions)."""
    import jax.numpy as jnp
    from flax import nnx

    from gtr_turbo_jax.models import from_pretrained

    model = from_pretrained(checkpoint_dir)
    inputs = make_inputs(case)
    grids = inputs["image_grid_thw"] if len(inputs["image_grid_thw"]) else None

    @nnx.jit
    def forward(model, input_ids, attention_mask, pixel_values):
        return model.forward(
            input_ids, attention_mask, pixel_values=pixel_values, image_grid_thw=grids
        ).logits

    pixel_values = jnp.asarray(inputs["pixel_values"]) if grids is not None else None
    logits = forward(
        model, jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"]), pixel_values
    )
    logits = np.asarray(logits)
    return np.where(inputs["attention_mask"][..., None] > 0, logits, 0.0).astype(np.float32)
