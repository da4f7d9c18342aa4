"""NumberLine (gym_cards): move the current number to the target with '+' / '-'."""

from gtr_turbo_jax.train.run_config import base_config


def get_config(model: str = "tiny"):
    config = base_config({"name": "numberline"}, model)
    config.early_termination = False
    config.format_reward.update(valid=0.0, invalid=-1.0)
    if model not in ("micro", "tiny"):
        # The paper's 512 env steps per update (RL4VLM's num_steps), 128 per optimizer step.
        config.train.turns_per_update = 512 // config.train.num_envs
    return config
