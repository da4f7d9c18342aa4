"""Points24 (gym_cards, METHOD.md section 5): four cards, reach 24. GTR trains it with early
termination (any -1 ends the episode) and a +3 / -2 format reward (section 4.2)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "env": {"name": "points24", "solvable_only": False},
            "early_termination": True,
            "model": "tiny",
            "rl": {"mode": "turbo_kl", "thought_lambda": 0.5},
            "sampling": {
                "temperature": 0.2,
                "top_k": 5,
                "repetition_penalty": 1.2,
                "max_new_tokens": 256,
            },
            "format_reward": {"valid": 3.0, "invalid": -2.0},
        }
    )
