"""Model benchmark: our jitted Qwen2.5-VL against transformers' PyTorch model on the same random
`tiny` checkpoint (same batch, same lengths, one image per row), plus loading memory.

    python experiments/bench/model.py [--quick]

- forward: tokens/s of a full forward over [batch, prompt] with images (median of repeats,
  alternating ours / PyTorch after a warm-up; compile time reported separately);
- decode: tokens/s of one-token steps with the KV cache after a prefill (ours: the whole loop in
  one jit, as the rollout runs it; PyTorch: its cache, one call per token);
- load: peak resident memory added while `from_pretrained` streams a random ~0.5B-parameter
  float32 checkpoint, over the checkpoint's file size (measured in a fresh subprocess).
The last line is one JSON object: forward_vs_torch, decode_vs_torch, load_peak_rss_over_file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGE_GRID = (1, 12, 12)  # a 168x168 image (Sokoban 6x6 at 28 px): 144 patches, 36 tokens


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_probe(path: str) -> None:
    """Subprocess entry: load the checkpoint and print the RSS before and the peak RSS."""
    import jax

    from gtr_turbo_jax.models import from_pretrained

    jax.numpy.zeros(1).block_until_ready()  # backend up before the baseline
    before = _rss_bytes()
    model = from_pretrained(path)
    jax.block_until_ready(jax.tree.leaves(model))
    # VmHWM belongs to this process's address space (ru_maxrss would carry the parent's over exec).
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"rss_before": before, "rss_peak": peak}))


def _load_config(quick: bool):
    from gtr_turbo_jax.models import get_config
    from gtr_turbo_jax.models.config import TextConfig, VisionConfig

    # ~0.5B parameters: Qwen2-0.5B's decoder shape (tied embeddings) + a small vision tower.
    text = TextConfig(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=6 if quick else 24,
        num_attention_heads=14,
        num_key_value_heads=2,
        mrope_section=(8, 12, 12),
    )
    vision = VisionConfig(
        depth=2,
        hidden_size=256,
        intermediate_size=512,
        num_heads=4,
        out_hidden_size=896,
        fullatt_block_indexes=(1,),
    )
    return get_config("tiny").replace(text=text, vision=vision, tie_word_embeddings=True)


def bench_load(quick: bool, workdir: Path) -> dict:
    from gtr_turbo_jax.models.random_checkpoint import checkpoint_shapes, write_random_checkpoint

    config = _load_config(quick)
    n_params = sum(int(np.prod(s)) for s in checkpoint_shapes(config).values())
    path = write_random_checkpoint(workdir / "load_ckpt", config, seed=0)
    file_bytes = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    result = subprocess.run(
        [sys.executable, __file__, "--load-probe", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    added = probe["rss_peak"] - probe["rss_before"]
    return {
        "load_params": n_params,
        "load_file_gib": file_bytes / 2**30,
        "load_peak_rss_over_file": added / file_bytes,
        "load_total_peak_rss_over_file": probe["rss_peak"] / file_bytes,
    }


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_speed(quick: bool, workdir: Path) -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import Qwen2_5_VLForConditionalGeneration

    from gtr_turbo_jax.models import from_pretrained, get_config
    from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint

    config = get_config("tiny")
    path = write_random_checkpoint(workdir / "tiny", config, seed=0)
    ours = from_pretrained(path)
    theirs = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()

    batch, prompt_length, n_decode = 4, 128, 16 if quick else 32
    repeats = 3 if quick else 5
    rng = np.random.default_rng(0)
    merge = config.vision.spatial_merge_size
    n_image = int(np.prod(IMAGE_GRID)) // merge**2
    head = [1, config.vision_start_token_id] + [config.image_token_id] * n_image
    head += [config.vision_end_token_id]
    text = rng.integers(8, config.text.vocab_size, (batch, prompt_length - len(head)))
    ids = np.concatenate([np.tile(head, (batch, 1)), text], axis=1)
    n_patches = int(np.prod(IMAGE_GRID))
    patches = rng.standard_normal((batch, n_patches, config.vision.patch_dim)).astype(np.float32)
    grid = np.array(IMAGE_GRID)
    tokens_per_forward = ids.size

    # -- forward ------------------------------------------------------------------------------
    graphdef, state = nnx.split(ours)

    @jax.jit
    def our_forward(state, ids, patches):
        model = nnx.merge(graphdef, state)
        return model.forward(ids, image_patches=patches, image_grid_thw=grid).logits

    j_ids, j_patches = jnp.asarray(ids), jnp.asarray(patches)
    start = time.perf_counter()
    our_forward(state, j_ids, j_patches).block_until_ready()
    forward_compile = time.perf_counter() - start

    t_kwargs = dict(
        input_ids=torch.tensor(ids),
        pixel_values=torch.tensor(patches.reshape(-1, patches.shape[-1])),
        image_grid_thw=torch.tensor(np.stack([grid] * batch)),
        mm_token_type_ids=torch.tensor((ids == config.image_token_id).astype(np.int64)),
    )

    def torch_forward():
        with torch.no_grad():
            return theirs(**t_kwargs).logits

    # Same numbers first: a benchmark of two different computations would mean nothing.
    gap = np.abs(np.asarray(our_forward(state, j_ids, j_patches)) - torch_forward().numpy()).max()
    if gap > 1e-3:
        raise RuntimeError(f"our logits differ from PyTorch's by {gap}")
    torch_forward()
    ours_t, torch_t = [], []
    for _ in range(repeats):
        ours_t.append(
            _median_time(lambda: our_forward(state, j_ids, j_patches).block_until_ready(), 1)
        )
        torch_t.append(_median_time(torch_forward, 1))
    forward = {
        "forward_ours_tok_s": tokens_per_forward / statistics.median(ours_t),
        "forward_torch_tok_s": tokens_per_forward / statistics.median(torch_t),
        "forward_compile_s": forward_compile,
    }

    # -- decode -------------------------------------------------------------------------------
    max_length = ids.shape[1] + n_decode

    @jax.jit
    def our_prefill(state, ids, patches):
        model = nnx.merge(graphdef, state)
        out = model.prefill(
            ids, jnp.ones_like(ids), max_length, image_patches=patches, image_grid_thw=grid
        )
        return jnp.argmax(out.logits[:, -1], -1), out.cache

    @jax.jit
    def our_decode(state, token, cache):
        def body(_, carry):
            token, cache = carry
            out = nnx.merge(graphdef, state).decode_step(token, cache)
            return jnp.argmax(out.logits[:, 0], -1), out.cache

        return jax.lax.fori_loop(0, n_decode, body, (token, cache))

    start = time.perf_counter()
    token, cache = our_prefill(state, j_ids, j_patches)
    jax.block_until_ready(our_decode(state, token, cache))
    decode_compile = time.perf_counter() - start

    def run_ours():
        token, cache = our_prefill(state, j_ids, j_patches)
        jax.block_until_ready((token, cache))
        start = time.perf_counter()
        jax.block_until_ready(our_decode(state, token, cache))
        return time.perf_counter() - start

    def run_torch():
        with torch.no_grad():
            out = theirs(**t_kwargs, use_cache=True)
            token, cache = out.logits[:, -1].argmax(-1, keepdim=True), out.past_key_values
            start = time.perf_counter()
            for _ in range(n_decode):
                out = theirs(input_ids=token, past_key_values=cache, use_cache=True)
                token, cache = out.logits[:, -1].argmax(-1, keepdim=True), out.past_key_values
            return time.perf_counter() - start

    run_torch()
    ours_t, torch_t = [], []
    for _ in range(repeats):
        ours_t.append(run_ours())
        torch_t.append(run_torch())
    decode = {
        "decode_ours_tok_s": batch * n_decode / statistics.median(ours_t),
        "decode_torch_tok_s": batch * n_decode / statistics.median(torch_t),
        "decode_compile_s": decode_compile,
    }
    return {
        "batch": batch,
        "prompt_tokens": int(ids.shape[1]),
        "decode_steps": n_decode,
        **forward,
        **decode,
        "forward_vs_torch": forward["forward_ours_tok_s"] / forward["forward_torch_tok_s"],
        "decode_vs_torch": decode["decode_ours_tok_s"] / decode["decode_torch_tok_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller load test")
    parser.add_argument("--load-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_probe:
        load_probe(args.load_probe)
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        speed = bench_speed(args.quick, Path(tmp))
        for key, value in speed.items():
            print(f"{key:>32}: {value:.3f}" if isinstance(value, float) else f"{key:>32}: {value}")
        load = bench_load(args.quick, Path(tmp))
        for key, value in load.items():
            print(f"{key:>32}: {value:.3f}" if isinstance(value, float) else f"{key:>32}: {value}")
    summary = {
        "bench": "model",
        "quick": args.quick,
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in {**speed, **load}.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
