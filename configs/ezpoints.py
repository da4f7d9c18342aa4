"""EZPoints (gym_cards): two cards, reach 12 with 1..10, + and *; always solvable."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "env": {"name": "ezpoints"},
            "early_termination": False,
            "model": "tiny",
            "rl": {"mode": "turbo_kl", "thought_lambda": 0.5},
            "sampling": {
                "temperature": 0.2,
                "top_k": 5,
                "repetition_penalty": 1.2,
                "max_new_tokens": 256,
            },
            "format_reward": {"valid": 0.0, "invalid": -1.0},
        }
    )
