"""Sokoban, 6x6 with one box (METHOD.md section 5; follows RAGEN/VAGEN): the default of
`make train ENV=sokoban`. Hard variant: `--config.env.size="(8, 8)" --config.env.num_boxes=2
--config.sampling.max_new_tokens=128` (two boxes make the tiny default's thoughts longer).
`--config=configs/sokoban.py:qwen2.5-vl-3b --config.model.path=DIR` for a real model."""

from gtr_turbo_jax.train.run_config import base_config


def get_config(model: str = "tiny"):
    tiny = model in ("micro", "tiny")
    # 14-px tiles: an 84x84 image, 9 image tokens for the tiny default; 28 px for real models.
    env = {"name": "sokoban", "size": (6, 6), "num_boxes": 1, "tile_size": 14 if tiny else 28}
    env["max_steps_in_episode"] = 12 if tiny else 100
    # gym-sokoban's rules: a move into a wall costs only its step. A negative value prices it
    # (`--config.env.blocked_move_penalty=-1.0`); docs/troubleshooting.md has what it changed.
    env["blocked_move_penalty"] = 0.0
    config = base_config(env, model)
    config.format_reward.update(valid=0.0, invalid=-1.0)
    # A tiny model cannot count rows and columns of the grid in minutes: list the cells it needs.
    config.prompt.positions = tiny
    if tiny:
        # The state only (grid and cells, 109 tokens instead of 218): the warm start teaches the
        # rules and the reply format, and every prompt token costs each rollout and update.
        config.prompt.style = "compact"
        # 1200 steps of 8 demonstrations (the samples and ~6 min of 600 steps of 16) give a warm
        # start of 25 / 15 / 18.5% greedy held-out success on seeds 0 / 1 / 2, where 600 of 16
        # gave 9 / 1.5 / 15%: at this size the steps, not the batch, are what is short.
        config.warm_start.update(steps=1200, batch_size=8)
        # What the tiny default changes from the paper's RL settings (docs/results.md has the
        # runs behind each): sampling at temperature 1, not 0.2. After the warm start the
        # thoughts' entropy is ~0.02 nats per token, so at 0.2 every rollout is the greedy reply
        # and PPO has nothing to compare (seed 0, 40 updates: +7.5 points at 0.2, +11 at 1).
        # PPO's log-probs are taken at the sampling temperature, as in the paper.
        config.sampling.temperature = 1.0
        config.rl.temperature = 1.0
        # Group advantages (GiGPO) instead of the critic's GAE: each update plays 4 levels 4
        # times each from the same start, for 12 turns (every episode ends inside the rollout);
        # an episode's advantage is its return minus its group's, plus a step's return-to-go
        # minus the mean over the group's steps from the same state. On the same 3 warm starts
        # GAE gained +13 / -4 / +8 points, groups +6.5 / +4.5 / +14 (docs/results.md).
        config.rl.advantage = "group"
        config.rl.group_size = 4
        config.train.turns_per_update = 12
        # 80 updates of 32 envs x 12 turns = 384 samples, 24 Adam steps of 32 (the cosine spans
        # all updates): ~14 minutes of RL on 2 cores. From the same 3 warm starts 16 envs gained
        # +6.5 / +4.5 / +14 points, 32 envs +9.5 / +11 / +14 (docs/results.md).
        config.train.num_envs = 32
        config.train.updates = 80
        # The free teacher as a trust region: 10x the paper's learning rate (1e-4 -> 1e-5) and
        # the thought KL weighed 100x (beta 100; an invalid reply's KL 1, so it still costs
        # 100). The warm start's thoughts carry ~0.02 nats/token, so at beta 1 a KL of ~0.005
        # is ~1/1000 of the advantages' spread and the teacher does nothing; at beta 100 it
        # holds the larger step. Same 3 warm starts: +17.0 / +6.5 / +21.5 points (1e-5 and beta
        # 1 gained +9.5 / +11.0 / +14.0); at 1e-4 beta 1 lost 4.0 on seed 0, ppo lost 5.5
        # (docs/results.md, session 14).
        config.rl.update(
            learning_rate=1e-4, final_learning_rate=1e-5, kl_beta=100.0, kl_invalid_value=1.0
        )
    return config
