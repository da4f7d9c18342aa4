"""Blackjack (gym_cards' pixel version of Gymnasium's): stand or hit."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "env": {"name": "blackjack"},
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
