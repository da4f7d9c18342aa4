"""from_pretrained / save_pretrained: streaming import, sharded index, hub and v5 tensor names,
export that transformers loads with the same logits, and one clear error per loader mistake."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _qwen_cases import GQA, IMAGE, TIED, VISION_END, VISION_START
from flax import nnx
from safetensors.numpy import load_file, save_file

from gtr_turbo_jax.models import from_pretrained, save_pretrained
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint

GRID = np.array([[1, 4, 8]])  # 32 patches -> 8 image tokens


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("hf_io") / "ckpt", GQA, seed=21)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(3)
    ids = [1, 9, VISION_START] + [IMAGE] * 8 + [VISION_END] + rng.integers(8, 128, 5).tolist()
    pixels = rng.standard_normal((32, GQA.vision.patch_dim)).astype(np.float32)
    return np.array([ids]), pixels


@pytest.fixture(scope="module")
def forward():
    return nnx.jit(lambda m, i, p: m(i, p, GRID))


@pytest.fixture(scope="module")
def reference_logits(checkpoint, inputs, forward):
    return np.asarray(forward(from_pretrained(checkpoint), *inputs))


def test_save_then_load_is_bit_exact_and_readable_by_safetensors(checkpoint, tmp_path):
    save_pretrained(from_pretrained(checkpoint), tmp_path)
    original, saved = (
        load_file(checkpoint / "model.safetensors"),
        load_file(tmp_path / "model.safetensors"),
    )
    assert sorted(saved) == sorted(original)
    for name, array in original.items():
        np.testing.assert_array_equal(saved[name], array, err_msg=name)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [
        "Qwen2_5_VLForConditionalGeneration"
    ]


def test_sharded_index_round_trip(checkpoint, tmp_path, inputs, forward, reference_logits):
    save_pretrained(from_pretrained(checkpoint), tmp_path, max_shard_bytes=64_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (tmp_path / "model.safetensors").exists()
    for file in files:
        assert set(load_file(tmp_path / file)) == {
            n for n, f in index["weight_map"].items() if f == file
        }
    np.testing.assert_array_equal(
        np.asarray(forward(from_pretrained(tmp_path), *inputs)), reference_logits
    )


def test_transformers_v5_tensor_names_load_too(
    checkpoint, tmp_path, inputs, forward, reference_logits
):
    renamed = {}
    for name, array in load_file(checkpoint / "model.safetensors").items():
        if name.startswith("model."):
            name = "model.language_model." + name[len("model.") :]
        elif name.startswith("visual."):
            name = "model." + name
        renamed[name] = array
    save_file(renamed, str(tmp_path / "model.safetensors"))
    shutil.copy(checkpoint / "config.json", tmp_path / "config.json")
    np.testing.assert_array_equal(
        np.asarray(forward(from_pretrained(tmp_path), *inputs)), reference_logits
    )


@pytest.mark.slow
def test_bfloat16_load(checkpoint, inputs, reference_logits):
    model = from_pretrained(checkpoint, dtype="bfloat16")
    assert model.language_model.layers[0].mlp.up_proj.weight[...].dtype == jnp.bfloat16
    logits = nnx.jit(lambda m, i, p: m(i, p, GRID))(model, *inputs)
    assert logits.dtype == jnp.float32
    scale = np.abs(reference_logits).max()
    assert np.abs(np.asarray(logits) - reference_logits).max() < 0.1 * scale


def test_tied_embeddings_export_has_no_head(tmp_path):
    source = write_random_checkpoint(tmp_path / "src", TIED, seed=2)
    save_pretrained(from_pretrained(source), tmp_path / "out")
    names = set(load_file(tmp_path / "out" / "model.safetensors"))
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"]


@pytest.mark.parity
def test_export_loads_in_transformers_with_same_logits(
    checkpoint, tmp_path, inputs, reference_logits
):
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5_VLForConditionalGeneration

    save_pretrained(from_pretrained(checkpoint), tmp_path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids, pixels = inputs
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor(ids),
            pixel_values=torch.tensor(pixels),
            image_grid_thw=torch.tensor(GRID),
            mm_token_type_ids=torch.tensor((ids == IMAGE).astype(np.int64)),
        ).logits.numpy()
    np.testing.assert_allclose(logits, reference_logits, rtol=0, atol=1e-4)


# -- loader errors: one clear line naming the tensor or file -------------------------------------


def _copy_with(checkpoint, directory, edit):
    directory.mkdir()
    shutil.copy(checkpoint / "config.json", directory / "config.json")
    tensors = load_file(checkpoint / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_missing_tensor_is_named(checkpoint, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    bad = _copy_with(checkpoint, tmp_path / "bad", lambda t: t.pop(name))
    with pytest.raises(ValueError, match=f"lacks tensor.*{name}"):
        from_pretrained(bad)


def test_extra_tensor_is_named(checkpoint, tmp_path):
    name = "model.layers.0.self_attn.rotary.inv_freq"
    bad = _copy_with(
        checkpoint, tmp_path / "bad", lambda t: t.update({name: np.ones(4, np.float32)})
    )
    with pytest.raises(ValueError, match=f"unexpected tensor '{name}'"):
        from_pretrained(bad)


def test_shape_mismatch_is_named(checkpoint, tmp_path):
    name = "visual.blocks.0.attn.qkv.weight"
    bad = _copy_with(checkpoint, tmp_path / "bad", lambda t: t.update({name: t[name][:-1]}))
    with pytest.raises(
        ValueError, match=rf"'{name}' has shape \[95, 32\], the config needs \[96, 32\]"
    ):
        from_pretrained(bad)


def test_wrong_architecture_is_refused(checkpoint, tmp_path):
    bad = tmp_path / "llama"
    shutil.copytree(checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type='llama'.*is not Qwen2.5-VL"):
        from_pretrained(bad)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nowhere")


def test_pickle_only_checkpoint_is_refused(checkpoint, tmp_path):
    shutil.copy(checkpoint / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(ValueError, match=r"only pickle checkpoints \(pytorch_model.bin\)"):
        from_pretrained(tmp_path)


def test_mesh_placement(checkpoint):
    mesh = jax.make_mesh((1,), ("fsdp",))
    model = from_pretrained(checkpoint, mesh=mesh)
    weight = model.language_model.layers[0].self_attn.q_proj.weight[...]
    assert weight.sharding.spec == jax.sharding.PartitionSpec(("fsdp",))
