"""A trained model -> a Hugging Face directory (`gtr-turbo export`'s format; the run-level commands
are `train.commands`).

The export is a complete Hugging Face model directory: `config.json` + safetensors of the policy
with LoRA merged (`models.save_pretrained`), and the tokenizer, chat template and image processor
files of the model it started from, so transformers (and `--config.model.path` here) load it as is.
The value head is not part of the HF model; it is written into a subfolder,
`value_head/value_head.safetensors` (a loader that globs the top folder's safetensors never sees it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from flax import nnx

from gtr_turbo_jax.models import save_pretrained
from gtr_turbo_jax.text.tokenizer import tiny_tokenizer_path
from gtr_turbo_jax.train.setup import RunSetup

PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "chat_template.json", "preprocessor_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json")  # fmt: skip


def export_model(setup: RunSetup, model: nnx.Module, out_dir: str | Path) -> Path:
    """Writes `model` (LoRA merged) and the source model's tokenizer/processor files to `out_dir`."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new output directory")
    save_pretrained(model, out, merge_lora=True)
    source = Path(setup.config.model.path) if setup.config.model.path else tiny_tokenizer_path()
    for name in PROCESSOR_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    return out


__all__ = ["PROCESSOR_FILES", "export_model"]
