"""ALFWorld (METHOD.md section 5), a Python env (`gtr_turbo_jax/envs/alfworld.py`) driven through
the host rollout. Needs ALFWorld installed (`pip install alfworld[full]`, `alfworld-download`):
`gtr-turbo train --env=alfworld:qwen2.5-vl-7b --config.model.path=DIR` trains the paper's setting
from a task-SFT checkpoint (`--config.env.config_path=PATH`: ALFWorld settings of your own). The tiny default runs the pipeline on a CPU (no warm
start: ALFWorld's expert plays the live game, and the demonstrations are a JAX env's)."""

from gtr_turbo_jax.envs import override_defaults
from gtr_turbo_jax.train.run_config import base_config


def get_config(model: str = "tiny"):
    tiny = model in ("micro", "tiny")
    # 84 px: 9 image tokens for the tiny models (14-px patches), 280 px: 100 for real models.
    # Every constructor argument of the env (`--config.env.config_path=PATH`, ...) at its default.
    env = {"name": "alfworld", **override_defaults("alfworld"), "image_size": 84 if tiny else 280}
    del env["split"]  # the trainer sets it: "test" for held-out evaluation
    config = base_config(env, model)
    config.warm_start.steps = 0
    # The paper's ALFWorld settings (RL4VLM): thought log-probs weighed 0.2, +5 / -5 format
    # reward, GAE (a THOR game is not replayed from its start for group baselines).
    config.rl.thought_lambda = 0.2
    config.rl.advantage = "gae"
    config.format_reward.update(valid=5.0, invalid=-5.0)
    # Every env is an AI2-THOR simulator (a process of its own): 4 of them, each playing 256
    # turns per update for the paper's 1,024 env steps (RL4VLM plays one env); the evaluation
    # plays its episodes 4 at a time (`Evaluator.envs_at_once`).
    config.train.num_envs = 4
    config.train.turns_per_update = 8 if tiny else 1024 // 4
    config.train.eval_episodes = 20 if tiny else 100
    return config
