"""config.json parsing (the hub's flat layout and transformers v5's nested one) and validation."""

from __future__ import annotations

import dataclasses

import pytest

from gtr_turbo_jax.models import get_config
from gtr_turbo_jax.models.config import from_hf_dict, to_hf_dict

# The layout of Qwen/Qwen2.5-VL-7B-Instruct's config.json on the hub (flat text fields).
HUB_7B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}


def test_hub_flat_config_parses_to_the_named_7b_config():
    assert from_hf_dict(HUB_7B) == get_config("qwen2.5-vl-7b")


@pytest.mark.parametrize("name", ["tiny", "qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_nested_config_round_trip(name):
    config = get_config(name)
    assert from_hf_dict(to_hf_dict(config)) == config


def test_invalid_configs_name_the_field():
    tiny = get_config("tiny")
    with pytest.raises(ValueError, match=r"mrope_section=\[4, 6, 7\] must sum to head_dim/2=16"):
        tiny.replace(text=dataclasses.replace(tiny.text, mrope_section=(4, 6, 7)))
    with pytest.raises(ValueError, match="dtype='float8' is not supported"):
        tiny.replace(dtype="float8")
    with pytest.raises(ValueError, match="use_sliding_window=true is not supported"):
        from_hf_dict({**HUB_7B, "use_sliding_window": True})
    with pytest.raises(ValueError, match=r"fullatt_block_indexes \[9\] are outside"):
        tiny.replace(vision=dataclasses.replace(tiny.vision, fullatt_block_indexes=(9,)))
