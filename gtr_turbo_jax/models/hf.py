"""Hugging Face interop: `from_pretrained` (streaming safetensors import) and `save_pretrained`.

Parameter paths mirror transformers' module names, so the name map is a short list of regex
renamings (both the hub layout `visual.* / model.*` and transformers v5's `model.visual.* /
model.language_model.*` are read; the hub layout is written, as transformers itself does).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from gtr_turbo_jax.models import safetensors_io
from gtr_turbo_jax.models.config import LoRAConfig, ModelConfig, from_hf_dict, to_hf_dict
from gtr_turbo_jax.models.qwen2_5_vl import Qwen25VL

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_SHARD_BYTES = 4 * 1024**3

# checkpoint name -> our parameter path (first match wins)
HF_TO_OURS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^(?:model\.)?visual\.merger\.mlp\.0\.(weight|bias)$", r"visual.merger.fc1.\1"),
        (r"^(?:model\.)?visual\.merger\.mlp\.2\.(weight|bias)$", r"visual.merger.fc2.\1"),
        (r"^(?:model\.)?visual\.(.+)$", r"visual.\1"),
        (r"^model\.language_model\.(.+)$", r"language_model.\1"),
        (r"^model\.(.+)$", r"language_model.\1"),
        (r"^lm_head\.weight$", r"lm_head.weight"),
    )
)
# our parameter path -> checkpoint name, in the hub layout
OURS_TO_HF: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^visual\.merger\.fc1\.(weight|bias)$", r"visual.merger.mlp.0.\1"),
        (r"^visual\.merger\.fc2\.(weight|bias)$", r"visual.merger.mlp.2.\1"),
        (r"^visual\.(.+)$", r"visual.\1"),
        (r"^language_model\.(.+)$", r"model.\1"),
        (r"^lm_head\.weight$", r"lm_head.weight"),
    )
)

ShardingFn = Callable[[str, tuple[int, ...]], jax.sharding.Sharding]


def _rename(name: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str | None:
    for pattern, replacement in rules:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    return None


def hf_to_param_path(name: str) -> str | None:
    return _rename(name, HF_TO_OURS)


def param_path_to_hf(path: str) -> str:
    name = _rename(path, OURS_TO_HF)
    if name is None:
        raise ValueError(f"parameter {path!r} has no Hugging Face name")
    return name


def _dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def default_sharding(mesh: jax.sharding.Mesh) -> ShardingFn:
    """FSDP-style placement: matrices split along their first dimension over every mesh axis when
    it divides evenly, everything else replicated."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))

    def sharding(path: str, shape: tuple[int, ...]) -> jax.sharding.Sharding:
        if len(shape) >= 2 and shape[0] % mesh.size == 0:
            return split
        return replicated

    return sharding


# ---------------------------------------------------------------------------------------------
# Reading


def load_config(path: str | os.PathLike, dtype: str = "float32") -> ModelConfig:
    directory = _checked_directory(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: a Hugging Face model directory needs it")
    try:
        hf = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    return from_hf_dict(hf, dtype=dtype, source=str(config_path))


def checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model directory (from the index when there is one)."""
    directory = _checked_directory(path)
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text()).get("weight_map", {})
        files = sorted({directory / name for name in weight_map.values()})
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{file} is listed in {index_path} but does not exist")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{directory} holds only pickle checkpoints ({', '.join(pickles)}); they are refused "
            "(pickle can run code): convert them to safetensors"
        )
    raise FileNotFoundError(f"no *.safetensors weights in {directory}")


def iter_checkpoint(
    path: str | os.PathLike,
) -> Iterator[tuple[str, Path, safetensors_io.TensorInfo]]:
    """(tensor name, file, info) for every tensor of the checkpoint, reading headers only."""
    seen: dict[str, Path] = {}
    for file in checkpoint_files(path):
        for name, info in safetensors_io.read_header(file).items():
            if name in seen:
                raise ValueError(f"tensor {name!r} appears in both {seen[name]} and {file}")
            seen[name] = file
            yield name, file, info


def from_pretrained(
    path: str | os.PathLike,
    dtype: str = "float32",
    mesh: jax.sharding.Mesh | None = None,
    *,
    param_dtype: str | None = None,
    lora: LoRAConfig | None = None,
    sharding: ShardingFn | None = None,
    seed: int = 0,
) -> Qwen25VL:
    """Loads a local Hugging Face Qwen2.5-VL directory, one tensor at a time.

    `dtype` is the compute dtype ("float32" or "bfloat16"); `param_dtype` that of the base weights
    (default: `dtype`; LoRA adapters are float32). With `mesh`,
    each leaf is placed by `sharding(path, shape)` (default: `default_sharding(mesh)`). With `lora`,
    fresh adapters (B = 0) are added on top of the loaded, frozen base weights.
    """
    config = load_config(path, dtype=dtype)
    if param_dtype is not None:
        config = config.replace(param_dtype=param_dtype)
    if sharding is None and mesh is not None:
        sharding = default_sharding(mesh)
    abstract = nnx.eval_shape(lambda: Qwen25VL(config, lora=lora, rngs=nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    expected = {
        _dotted(p): v for p, v in flat if not isinstance(v, nnx.LoRAParam) and v is not None
    }
    target_dtype = np.dtype(config.weight_dtype)
    loaded: set[str] = set()
    for name, file, info in iter_checkpoint(path):
        param_path = hf_to_param_path(name)
        if param_path == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: the embedding is the head
        if param_path not in expected:
            raise ValueError(f"{file}: unexpected tensor {name!r} (not a Qwen2.5-VL parameter)")
        variable = expected[param_path]
        if tuple(info.shape) != tuple(variable.shape):
            raise ValueError(
                f"{file}: tensor {name!r} has shape {list(info.shape)}, the config needs "
                f"{list(variable.shape)}"
            )
        array = safetensors_io.read_tensor(file, info, target_dtype)
        placement = sharding(param_path, array.shape) if sharding is not None else None
        variable.set_value(jax.device_put(array, placement))
        del array
        loaded.add(param_path)
    missing = sorted(set(expected) - loaded)
    if missing:
        names = [param_path_to_hf(p) for p in missing]
        more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
        raise ValueError(f"{path}: checkpoint lacks tensor(s) {names[:3]}{more}")
    if lora is not None:
        for p, variable in flat:
            if isinstance(variable, nnx.LoRAParam):
                value = _init_adapter(_dotted(p), variable.shape, seed)
                placement = sharding(_dotted(p), value.shape) if sharding is not None else None
                variable.set_value(jax.device_put(value, placement))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _init_adapter(path: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """LoRA init on the host (no device compile): A Kaiming-uniform, B zero, as PEFT."""
    if path.endswith("lora_b"):
        return np.zeros(shape, np.float32)
    rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
    bound = (3.0 / shape[0]) ** 0.5
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def _checked_directory(path: str | os.PathLike) -> Path:
    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a directory (expected a Hugging Face model dir)"
        )
    return directory


# ---------------------------------------------------------------------------------------------
# Writing


def export_tensors(model: Qwen25VL, merge_lora: bool = True) -> list[safetensors_io.TensorSpec]:
    """One spec per checkpoint tensor (hub names), each fetched from the device only when written."""
    flat = {_dotted(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    scale = model.lora.scale if model.lora is not None else 0.0
    specs = []
    for path, variable in flat.items():
        if isinstance(variable, nnx.LoRAParam):
            continue
        prefix = path.rsplit(".", 1)[0]
        lora_a, lora_b = flat.get(f"{prefix}.lora_a"), flat.get(f"{prefix}.lora_b")
        has_lora = merge_lora and lora_a is not None and path.endswith(".weight")

        def produce(variable=variable, lora_a=lora_a, lora_b=lora_b, has_lora=has_lora):
            weight = np.asarray(jax.device_get(variable[...]))
            if has_lora:  # on the host: no device compile per shape, one tensor at a time
                a = np.asarray(jax.device_get(lora_a[...]), np.float32)
                b = np.asarray(jax.device_get(lora_b[...]), np.float32)
                weight = (weight.astype(np.float32) + (a @ b).T * scale).astype(weight.dtype)
            return weight

        specs.append(
            safetensors_io.TensorSpec(
                param_path_to_hf(path), tuple(variable.shape), np.dtype(variable.dtype), produce
            )
        )
    return sorted(specs, key=lambda spec: spec.name)


def save_pretrained(
    model: Qwen25VL,
    path: str | os.PathLike,
    merge_lora: bool = True,
    *,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Writes config.json + safetensors (sharded with an index above `max_shard_bytes`) that
    transformers' `Qwen2_5_VLForConditionalGeneration.from_pretrained` (and vLLM) load.

    With `merge_lora` the adapters are folded into the weights; without it only the base weights
    are written (the adapters are then the caller's to save).
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    torch_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[
        config.param_dtype
    ]
    (directory / CONFIG_FILE).write_text(
        json.dumps(to_hf_dict(config, torch_dtype=torch_dtype), indent=2) + "\n"
    )
    specs = export_tensors(model, merge_lora=merge_lora)
    shards: list[list[safetensors_io.TensorSpec]] = [[]]
    shard_bytes = 0
    for spec in specs:
        size = int(np.prod(spec.shape, dtype=np.int64)) * spec.dtype.itemsize
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(spec)
        shard_bytes += size
    for stale in [*directory.glob("*.safetensors"), directory / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        safetensors_io.write_file(directory / SINGLE_FILE, shards[0])
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        safetensors_io.write_file(directory / name, shard)
        for spec in shard:
            weight_map[spec.name] = name
            total += int(np.prod(spec.shape, dtype=np.int64)) * spec.dtype.itemsize
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
