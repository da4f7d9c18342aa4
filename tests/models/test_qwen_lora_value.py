"""LoRA (frozen base kept apart from the adapters, teacher adapters sharing the base, merged
export), the value head, and the named configurations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _qwen_cases import GQA, IMAGE, VISION_END, VISION_START
from flax import nnx

from gtr_turbo_jax.models import (
    LoRAConfig,
    Qwen25VL,
    ValueHead,
    from_pretrained,
    get_config,
    last_prompt_hidden,
    save_pretrained,
)
from gtr_turbo_jax.models.layers import Linear
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint

GRID = np.array([[1, 4, 4]])
LORA = LoRAConfig(rank=4, alpha=8.0, dropout=0.1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("lora") / "ckpt", GQA, seed=31)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(5)
    ids = [1, 9, VISION_START] + [IMAGE] * 4 + [VISION_END] + rng.integers(8, 128, 4).tolist()
    return np.array([ids]), rng.standard_normal((16, GQA.vision.patch_dim)).astype(np.float32)


@pytest.fixture(scope="module")
def forward():
    return nnx.jit(lambda m, i, p: m(i, p, GRID))


def _randomise_adapters(model: Qwen25VL, seed: int) -> None:
    """Non-zero B (and fresh A) so the adapters change the output."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.LoRAParam)
    nnx.update(
        model,
        jax.tree.map(lambda x: jnp.asarray(0.05 * rng.standard_normal(x.shape), x.dtype), state),
    )


def test_lora_linear_matches_numpy():
    layer = Linear(
        6,
        5,
        path="x.q_proj",
        use_bias=True,
        lora=LORA,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs=nnx.Rngs(0),
    )
    layer.lora_b.set_value(jax.random.normal(jax.random.key(1), (4, 5)))
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    apply = nnx.jit(lambda layer, x, key: layer(x, key))
    w, b = np.asarray(layer.weight[...]), np.asarray(layer.bias[...])
    a, bb = np.asarray(layer.lora_a[...]), np.asarray(layer.lora_b[...])
    expected = x @ w.T + b + (x @ a @ bb) * (8.0 / 4)
    np.testing.assert_allclose(np.asarray(apply(layer, x, None)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.merged_weight()), w + ((a @ bb) * 2.0).T, rtol=1e-6)
    # Dropout touches only the adapter path and is reproducible per key.
    key = jax.random.key(7)
    dropped = np.asarray(apply(layer, x, key))
    np.testing.assert_array_equal(dropped, np.asarray(apply(layer, x, key)))
    assert np.abs(dropped - expected).max() > 1e-3
    layer.lora_b.set_value(jnp.zeros((4, 5)))
    np.testing.assert_allclose(np.asarray(apply(layer, x, key)), x @ w.T + b, rtol=1e-5, atol=1e-5)


def test_lora_targets_every_linear_but_the_head():
    def adapted(lora):
        model = nnx.eval_shape(lambda: Qwen25VL(GQA, lora=lora, rngs=nnx.Rngs(0)))
        paths = [
            ".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
        ]
        return {p.rsplit(".", 1)[0] for p in paths}

    text, vision = GQA.text, GQA.vision
    everything = adapted(LoRAConfig(rank=2))
    assert len(everything) == 7 * text.num_hidden_layers + 5 * vision.depth + 2
    assert "visual.merger.fc1" in everything and "lm_head" not in everything
    text_only = adapted(LoRAConfig(rank=2, include_vision=False))
    assert text_only == {p for p in everything if p.startswith("language_model.")}
    attention_only = adapted(LoRAConfig(rank=2, targets=(r"language_model\.layers\.0\..*_proj",)))
    assert len(attention_only) == 7


def test_teacher_adapters_share_the_frozen_base(checkpoint, inputs, forward):
    base_logits = np.asarray(forward(from_pretrained(checkpoint), *inputs))
    model = from_pretrained(checkpoint, lora=LORA)
    np.testing.assert_allclose(np.asarray(forward(model, *inputs)), base_logits, atol=1e-5)

    graphdef, policy_lora, base = nnx.split(model, nnx.LoRAParam, nnx.Param)
    assert not any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(base))
    teacher_lora = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.05), policy_lora)

    def logits(lora_state, ids, pixels):
        return nnx.merge(graphdef, lora_state, base)(ids, pixels, GRID)

    scored = jax.jit(logits)
    np.testing.assert_allclose(np.asarray(scored(policy_lora, *inputs)), base_logits, atol=1e-5)
    assert np.abs(np.asarray(scored(teacher_lora, *inputs)) - base_logits).max() > 1e-2
    teacher = nnx.merge(graphdef, teacher_lora, base)
    policy = nnx.merge(graphdef, policy_lora, base)
    assert (
        teacher.visual.blocks[0].attn.qkv.weight[...]
        is policy.visual.blocks[0].attn.qkv.weight[...]
    )

    # Gradients flow to the adapters only (the base is not an argument); text-only keeps it small.
    def text_loss(lora_state, ids):
        return nnx.merge(graphdef, lora_state, base)(ids).sum()

    grads = jax.jit(jax.grad(text_loss))(policy_lora, inputs[0][:, -4:])
    grad_b = grads["language_model"]["layers"][0]["self_attn"]["q_proj"]["lora_b"][...]
    assert np.abs(np.asarray(grad_b)).max() > 0


def test_merged_export_equals_lora_forward(checkpoint, inputs, forward, tmp_path):
    model = from_pretrained(checkpoint, lora=LORA)
    _randomise_adapters(model, seed=3)
    lora_logits = np.asarray(forward(model, *inputs))
    save_pretrained(model, tmp_path, merge_lora=True)
    merged = np.asarray(forward(from_pretrained(tmp_path), *inputs))
    np.testing.assert_allclose(merged, lora_logits, rtol=0, atol=1e-4)
    save_pretrained(model, tmp_path / "base", merge_lora=False)
    base = np.asarray(forward(from_pretrained(tmp_path / "base"), *inputs))
    np.testing.assert_array_equal(base, np.asarray(forward(from_pretrained(checkpoint), *inputs)))


def test_value_head_matches_numpy_mlp():
    head = nnx.jit(lambda: ValueHead(8, widths=(6, 4), rngs=nnx.Rngs(0)))()
    hidden = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    x = hidden
    for i, layer in enumerate(head.layers):
        x = x @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])
        x = np.maximum(x, 0) if i < 2 else x
    values = nnx.jit(lambda head, hidden: head(hidden))(head, hidden)
    np.testing.assert_allclose(np.asarray(values), x[:, 0], rtol=1e-5, atol=1e-6)
    default = nnx.eval_shape(lambda: ValueHead(8, rngs=nnx.Rngs(0)))
    assert [layer.kernel.shape for layer in default.layers] == [(8, 1024), (1024, 512), (512, 1)]


def test_last_prompt_hidden_picks_the_last_prompt_token():
    hidden = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    left_padded = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    right_padded = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(last_prompt_hidden(hidden, left_padded), hidden[:, 4])
    np.testing.assert_array_equal(
        last_prompt_hidden(hidden, right_padded), np.stack([hidden[0, 1], hidden[1, 3]])
    )


def _count(config) -> int:
    model = nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, published", [("qwen2.5-vl-3b", 3_754_622_976), ("qwen2.5-vl-7b", 8_292_166_656)]
)
def test_named_configs_have_the_published_sizes(name, published):
    assert abs(_count(get_config(name)) - published) / published < 0.005


def test_tiny_config():
    config = get_config("tiny")
    assert 1_000_000 < _count(config) < 5_000_000
    assert (config.text.vocab_size, config.image_token_id, config.video_token_id) == (1024, 6, 7)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (3, 4)
    assert (config.text.eos_token_id, config.text.pad_token_id) == (2, 0)
    with pytest.raises(ValueError, match="unknown model config 'huge'"):
        get_config("huge")
