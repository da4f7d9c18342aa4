"""Sokoban, 6x6 with one box (METHOD.md section 5; follows RAGEN/VAGEN): the default of
`make train ENV=sokoban`. Hard variant: `--config.env.size="(8, 8)" --config.env.num_boxes=2`."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "env": {"name": "sokoban", "size": (6, 6), "num_boxes": 1},
            "model": "tiny",
            # Fields of gtr_turbo_jax.train.UpdateConfig (rl: `update` is a ConfigDict method name);
            # everything else keeps the paper's default.
            "rl": {"mode": "turbo_kl", "thought_lambda": 0.5},
            # METHOD.md section 1: the paper's sampling settings.
            "sampling": {
                "temperature": 0.2,
                "top_k": 5,
                "repetition_penalty": 1.2,
                "max_new_tokens": 256,
            },
            "format_reward": {"valid": 0.0, "invalid": -1.0},
        }
    )
