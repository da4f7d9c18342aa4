"""What the notebooks in this folder share, so that each notebook cell stays a few lines.

- `SMALL` / `SKIP_DOWNLOAD`: the CI switches (`GTR_TURBO_NOTEBOOK_SMALL=1` shrinks every run to the
  `--smoke` sizes; `GTR_TURBO_SKIP_DOWNLOAD=1` replaces the Hugging Face download with a tiny
  random local model);
- `backend_summary()`, `local_mesh()`: which accelerator the runtime has and a `(data, fsdp)` mesh
  over all of its local devices;
- `show_plots(...)`, `show_gif(...)`, `latest_gif(...)`: the run's curves and episode animations
  displayed inline;
- `write_tiny_model_dir(...)`: a random Qwen2.5-VL-architecture Hugging Face directory with the
  shipped tiny tokenizer (what `--config.model.path` expects), written locally;
- `memory_estimate(learner)`: the bytes a run needs on one device, before it starts
  (`human_bytes` prints them).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import jax

SMALL_VARIABLE = "GTR_TURBO_NOTEBOOK_SMALL"
SKIP_DOWNLOAD_VARIABLE = "GTR_TURBO_SKIP_DOWNLOAD"
SMALL = os.environ.get(SMALL_VARIABLE) == "1"
SKIP_DOWNLOAD = os.environ.get(SKIP_DOWNLOAD_VARIABLE) == "1"

# -- the runtime --------------------------------------------------------------------------------


def backend_summary() -> str:
    """One line: the backend (tpu, gpu or cpu), the device kind and count, the process count."""
    devices = jax.local_devices()
    kinds = sorted({device.device_kind for device in devices})
    return (
        f"backend {jax.default_backend()}: {len(devices)} local device(s) ({', '.join(kinds)}), "
        f"process {jax.process_index()} of {jax.process_count()}"
    )


def local_mesh(fsdp: int = 1) -> jax.sharding.Mesh:
    """A `(data, fsdp)` mesh over every local device: `fsdp` devices hold each parameter shard,
    the rest of the factor goes to `data` (the trainer's axes, `train.sharding.make_mesh`)."""
    from gtr_turbo_jax.train.sharding import make_mesh

    count = len(jax.local_devices())
    if fsdp < 1 or count % fsdp:
        raise ValueError(f"fsdp={fsdp!r}: need a divisor of the {count} local device(s)")
    return make_mesh(count // fsdp, fsdp)


def device_memory_bytes() -> int | None:
    """Memory of one local device in bytes (TPU / GPU), or None where the backend does not say
    (CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


# -- pictures -----------------------------------------------------------------------------------


def show_plots(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    metrics: Sequence[str] = ("success_rate",),
    smoothing: float = 0.0,
) -> list[Path]:
    """`gtr-turbo plot` on `run_dirs` into `out_dir`; displays the PNGs of `metrics` (those some
    run logged) inline and returns every path written."""
    from IPython.display import Image, display

    from gtr_turbo_jax.plot import plot_runs

    paths = plot_runs(list(run_dirs), out_dir, smoothing=smoothing)
    by_name = {path.stem: path for path in paths}
    for name in metrics:
        if name in by_name:
            display(Image(filename=str(by_name[name])))
    return paths


def latest_gif(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest episode animation of a run (`RUN_DIR/episodes/*.gif`), or None."""
    gifs = sorted(Path(run_dir, "episodes").glob("*.gif"), key=lambda p: (p.stat().st_mtime, p))
    return gifs[-1] if gifs else None


def show_gif(path: str | os.PathLike[str]) -> None:
    """Displays an episode animation (the frames with the agent's reply under each)."""
    from IPython.display import Image, display

    display(Image(data=Path(path).read_bytes(), format="gif"))


# -- models -------------------------------------------------------------------------------------


def write_tiny_model_dir(path: str | os.PathLike[str], size: str = "micro", seed: int = 0) -> Path:
    """A complete local Hugging Face model directory of a named tiny size: random weights
    (`config.json`, `model.safetensors`) plus the shipped tiny tokenizer and image processor
    files, which `--config.model.path` needs beside the weights."""
    from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
    from gtr_turbo_jax.text.tokenizer import tiny_tokenizer_path

    if size not in ("micro", "tiny"):
        raise ValueError(f"size={size!r}: the tiny tokenizer fits only 'micro' or 'tiny'")
    directory = write_random_checkpoint(path, size, seed=seed)
    for file in sorted(tiny_tokenizer_path().iterdir()):
        if file.is_file():
            shutil.copyfile(file, directory / file.name)
    return directory


# -- memory -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on one device. `state` is exact (every `TrainState` part, from `jax.eval_shape`);
    `kv_cache` is the rollout's KV cache (exact); `logits` is one micro-batch's float32 logits
    over prompt + reply (with a 150k-token vocabulary often the largest activation). The other
    activations of the update's forward and backward are not counted."""

    state: dict[str, int]
    kv_cache: int
    logits: int

    @property
    def total(self) -> int:
        return sum(self.state.values()) + self.kv_cache + self.logits

    def table(self, device_bytes: int | None = None) -> str:
        rows = [(f"state/{name}", size) for name, size in self.state.items() if size]
        rows += [
            ("rollout KV cache", self.kv_cache),
            ("update logits (1 micro-batch)", self.logits),
        ]
        rows.append(("total (activations not counted)", self.total))
        lines = [f"{name:<34}{human_bytes(size):>12}" for name, size in rows]
        if device_bytes:
            verdict = "fits" if self.total < 0.85 * device_bytes else "DOES NOT FIT"
            lines.append(f"{'one device has':<34}{human_bytes(device_bytes):>12}: {verdict}")
        return "\n".join(lines)


def human_bytes(size: float) -> str:
    """`1536` -> `'1.5 KiB'`: the largest binary unit that keeps the number at least 1."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _bytes(tree) -> int:
    return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def memory_estimate(learner) -> MemoryEstimate:
    """What the run of `learner` (a `train.learner.Learner`, e.g. `Trainer(...).learner` before
    `run`) needs on one device; computed from shapes only (no parameter is allocated here)."""
    from flax import nnx

    from gtr_turbo_jax.models import Qwen25VL, ValueHead
    from gtr_turbo_jax.train.state import init_train_state

    setup, config = learner.setup, learner.config

    def state_shapes():
        model = Qwen25VL(setup.model_config, lora=setup.lora, rngs=nnx.Rngs(0))
        value_head = ValueHead(
            setup.model_config.text.hidden_size,
            widths=tuple(config.model.value_widths),
            rngs=nnx.Rngs(1),
        )
        batch = learner.batch_like()
        return init_train_state(model, value_head, setup.update, jax.random.key(0), batch)[1]

    state = jax.eval_shape(state_shapes)
    parts = {
        field.name: _bytes(getattr(state, field.name))
        for field in dataclasses.fields(state)
        if not isinstance(getattr(state, field.name), float)
    }
    text = setup.model_config.text
    length = setup.template.max_length + setup.sampling.max_new_tokens
    itemsize = setup.model_config.compute_dtype.itemsize
    kv_cache = (
        2 * text.num_hidden_layers * config.train.num_envs * text.num_key_value_heads
        * text.head_dim * length * itemsize
    )  # fmt: skip
    logits = config.rl.minibatch_size * length * text.vocab_size * 4
    return MemoryEstimate(state=parts, kv_cache=kv_cache, logits=logits)


__all__ = [
    "SKIP_DOWNLOAD",
    "SMALL",
    "MemoryEstimate",
    "backend_summary",
    "device_memory_bytes",
    "human_bytes",
    "latest_gif",
    "local_mesh",
    "memory_estimate",
    "show_gif",
    "show_plots",
    "write_tiny_model_dir",
]
