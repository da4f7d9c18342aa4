"""Regenerates the stored parity references (tests/models/qwen_reference/*.npz) from transformers'
PyTorch Qwen2.5-VL, so torch-less machines still check our model against it.

    .venv/bin/python tests/models/make_qwen_reference.py

Needs torch (`make install-all`). Run it after changing a case in _qwen_cases.py.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _qwen_cases import CASES, REFERENCE_DIR, make_inputs, reference_path, torch_logits  # noqa: E402

from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint  # noqa: E402


def main() -> None:
    REFERENCE_DIR.mkdir(exist_ok=True)
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = write_random_checkpoint(Path(tmp) / "ckpt", case.config, case.seed)
            logits = torch_logits(case, checkpoint)
        inputs = make_inputs(case)
        np.savez_compressed(
            reference_path(case),
            logits=logits,
            input_ids=inputs["input_ids"],
            pixel_checksum=np.float64(inputs["pixel_values"].astype(np.float64).sum()),
        )
        print(f"{case.name}: logits {logits.shape} -> {reference_path(case)}")


if __name__ == "__main__":
    main()
