"""Points24 (gym_cards, METHOD.md section 5): four cards, reach 24. GTR trains it with early
termination (any -1 ends the episode) and a +3 / -2 format reward (section 4.2); GTR itself, the
`gtr` baseline, rewards a valid reply with +5 and an invalid one with 0 (section 3)."""

from gtr_turbo_jax.train.run_config import base_config


def get_config(model: str = "tiny"):
    config = base_config({"name": "points24", "solvable_only": False}, model)
    config.early_termination = True
    config.format_reward.update(valid=3.0, invalid=-2.0, gtr_valid=5.0, gtr_invalid=0.0)
    if model not in ("micro", "tiny"):
        # The paper's 1024 env steps per update (RL4VLM's num_steps), 128 per optimizer step.
        config.train.turns_per_update = 1024 // config.train.num_envs
    return config
