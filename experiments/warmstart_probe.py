"""How well a supervised warm start learnt the expert: greedy replies on held-out expert states.

    python experiments/warmstart_probe.py [--env sokoban] [--steps 600] [--lr 1e-3] \
        [--config.prompt.positions=False ...]

Trains the warm start alone (the trainer's `collect_demos` -> `encode_demos` -> `warm_start`) on
the config's demonstrations, then plays greedy replies to `--probe` expert states of the held-out
levels and reports: the share whose action is the expert's, the majority-action share (the
baseline a model that ignores the state reaches), the legal-reply share, and the truth of the
thoughts' claims (`rollout.metrics.grounding_claims`). For Sokoban also the teacher-forced
accuracy of each decision of the expert's thought (`decisions`: the push direction, the pushing
cell, each gap's numbers and direction, "but blocked", the move), which says which step of the
reasoning the warm start has not learnt. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gtr_turbo_jax.rollout.metrics import grounding_claims
from gtr_turbo_jax.rollout.sampler import SamplingConfig, sample
from gtr_turbo_jax.text.image import preprocess_images
from gtr_turbo_jax.train.demos import collect_demos, encode_demos
from gtr_turbo_jax.train.run_config import load_config
from gtr_turbo_jax.train.scoring import score_replies
from gtr_turbo_jax.train.setup import build_model, build_setup
from gtr_turbo_jax.train.state import split_model
from gtr_turbo_jax.train.warmstart import WarmStartConfig, greedy_actions, take_rows, warm_start

# The decisions of a Sokoban expert reason (`train.demos`); each group's first character is the
# token whose teacher-forced prediction is scored. A group that may be empty ("but blocked") is
# scored at the character after the direction word before it: "," or " but".
SOKOBAN_REASON = re.compile(
    r"Push the box at \(\d, \d\) (?P<push>\w+) from \((?P<stand_row>\d), (?P<stand_col>\d)\); "
    r"row (?P<row_from>\d) to (?P<row_to>\d) is (?P<row_dir>\w+)(?P<row_blocked>)"
    r"(?: but blocked)?, column (?P<col_from>\d) to (?P<col_to>\d) is (?P<col_dir>\w+)"
    r"(?: but blocked)?, so I (?P<verb>move|push) (?P<action>\w+)\."
)


def decision_accuracy(setup, graphdef, base, trainable, demos, probe_set) -> dict[str, float]:
    """Teacher-forced: the share of probe replies whose token at each decision is the argmax."""
    hits: dict[str, list[bool]] = {}
    for start in range(0, len(demos) - 31, 32):
        rows = take_rows(probe_set, np.arange(start, start + 32))
        patches = preprocess_images(jnp.asarray(rows.images), probe_set.image_config).pixel_values
        scores = score_replies(
            graphdef, base, trainable, rows.prompt_ids, rows.prompt_mask, patches,
            rows.reply_ids, rows.label_mask, probe_set.image_grid,
        )  # fmt: skip
        predicted = np.asarray(jnp.argmax(scores.logits, axis=-1))
        for i, demo in enumerate(demos[start : start + 32]):
            match = SOKOBAN_REASON.search(demo.reply)
            if match is None:
                continue
            offsets = setup.tokenizer(
                demo.reply, add_special_tokens=False, return_offsets_mapping=True
            )["offset_mapping"]
            for name in match.re.groupindex:
                at = match.start(name)
                token = next(t for t, (a, b) in enumerate(offsets) if a <= at < b or a > at)
                right = predicted[i, token] == rows.reply_ids[i, token]
                hits.setdefault(name, []).append(bool(right))
    return {name: round(float(np.mean(h)), 3) for name, h in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="sokoban")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--demos", type=int, default=None, help="default: the config's")
    parser.add_argument("--noise", type=float, default=None, help="default: the config's")
    parser.add_argument("--probe", type=int, default=256, help="held-out expert states scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default="", help="pickle the trained parameters to this file")
    parser.add_argument("--load", default="", help="score pickled parameters instead of training")
    args, overrides = parser.parse_known_args()
    config = load_config(args.env, overrides)
    setup = build_setup(config)
    num_demos = args.demos or config.warm_start.demos
    noise = config.warm_start.noise if args.noise is None else args.noise
    model, _ = build_model(setup)
    key = jax.random.key(args.seed)
    demo_key, probe_key, train_key = jax.random.split(key, 3)
    style = setup.template.style
    width = setup.sampling.max_new_tokens

    def encoded(env, params, k, count, noise=0.0):
        demos = collect_demos(setup.env_name, env, params, k, count, noise=noise, style=style)
        return demos, encode_demos(
            demos, setup.template, setup.tokenizer, setup.image_config, width
        )

    collect_start = time.perf_counter()
    _, train_set = encoded(setup.env, setup.env_params, demo_key, num_demos, noise)
    collect_seconds = time.perf_counter() - collect_start
    probe, probe_set = encoded(setup.eval_env, setup.eval_params, probe_key, args.probe)
    graphdef, trainable, base = split_model(model)
    start = time.perf_counter()
    config = WarmStartConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup=min(20, args.steps // 5),
    )
    if args.load:
        with open(args.load, "rb") as file:
            trainable = jax.tree.map(jnp.asarray, pickle.load(file))
        losses = None
    else:
        trainable, losses = warm_start(graphdef, base, trainable, train_set, config, train_key)
    seconds = time.perf_counter() - start
    if args.save:
        with open(args.save, "wb") as file:
            pickle.dump(jax.device_get(trainable), file)
    eos = setup.sampling.eos_ids[0]
    actions, legal = greedy_actions(graphdef, base, trainable, probe_set, setup.spec, eos)

    # The thoughts' claims, on one greedy batch of the probe states.
    rows = take_rows(probe_set, np.arange(min(64, len(probe))))
    out = sample(
        graphdef,
        nnx.merge_state(trainable, base),
        jnp.asarray(rows.prompt_ids),
        jnp.asarray(rows.prompt_mask),
        preprocess_images(jnp.asarray(rows.images), probe_set.image_config).pixel_values,
        jax.random.key(0),
        SamplingConfig(max_new_tokens=width, greedy=True, eos_ids=(eos,)),
        probe_set.image_grid,
    )
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask).astype(bool)
    claims = [
        grounding_claims(setup.env_name, setup.tokenizer.decode(tokens[i][mask[i]]), d.fields)
        for i, d in enumerate(probe[: len(tokens)])
    ]
    made = [c for c in claims if c]
    decisions = {}
    if setup.env_name == "sokoban":
        decisions = decision_accuracy(setup, graphdef, base, trainable, probe, probe_set)
    result = {
        "probe": "warmstart",
        "env": setup.env_name,
        "steps": args.steps,
        "learning_rate": args.lr,
        "demos": num_demos,
        "noise": noise,
        "collect_seconds": round(collect_seconds, 1),
        "seconds_per_step": round(seconds / args.steps, 3),
        "loss_last10": None if losses is None else round(float(np.mean(losses[-10:])), 4),
        "action_accuracy": round(float(np.mean(actions == probe_set.actions)), 4),
        "majority_action": round(float(np.bincount(probe_set.actions).max() / len(probe)), 4),
        "legal_rate": round(float(np.mean(legal)), 4),
        "claims_true": round(float(np.mean([np.mean(c) for c in made])), 4) if made else None,
        "decisions": decisions,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
