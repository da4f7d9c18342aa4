"""`Batch`: what one rollout hands to one update, all fixed shape, leading axes `[turns, envs]`.

Conventions (those of the model and the sampler):
- prompts are LEFT-padded (`prompt_mask` 0 on the left), so every row's last prompt token sits at
  index `prompt_len - 1`; each prompt holds the image tokens of its one image;
- `image_patches [T, E, N, patch_dim]` is the model's batched image form, one image per turn with
  the static grid `image_grid_thw = (t, h, w)` (`N = t * h * w`);
- response tokens are right-padded; `thought_mask` / `action_mask` split the reply at the
  `"action":` marker (both inside `response_mask`);
- `sampler_logp` holds the sampler's `logp_raw`: the log-probs of the sampled tokens under
  `log_softmax(logits / temperature)` of the unprocessed logits (what `rl.rescore` recomputes);
  `sampler_logp_unit` the same at temperature 1 and `sampler_entropy` the entropy of each
  position's distribution at temperature 1: with them and `value`, the update needs no second
  forward of the policy over the batch (`UpdateConfig.rescore`);
- `next_value[t]` is the rollout's value of the observation reached by step t (before any automatic
  reset), for bootstrapping truncated episodes and the rollout's last turn (see `rl.gae`);
- `teacher_ids` / `teacher_label_mask` (SFT variants): the teacher's reply to the same prompt with
  the agent's action put in, and the labelled tokens (the reply minus its action span). Rows
  without a correction have an all-zero label mask. Other modes may give them width 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

ImageGrid = tuple[int, int, int]


@struct.dataclass
class Batch:
    prompt_ids: jax.Array  # [T, E, P] int32
    prompt_mask: jax.Array  # [T, E, P] int32, left padding
    image_patches: jax.Array  # [T, E, N, patch_dim] float
    response_ids: jax.Array  # [T, E, R] int32
    response_mask: jax.Array  # [T, E, R] bool: sampled tokens (EOS included), not padding
    thought_mask: jax.Array  # [T, E, R] bool: reply tokens before the "action": marker
    action_mask: jax.Array  # [T, E, R] bool: the marker and what follows
    valid: jax.Array  # [T, E] bool: the reply parsed as JSON with the required keys
    action: jax.Array  # [T, E] int32: the action the env executed
    sampler_logp: jax.Array  # [T, E, R] float32: the sampler's per-token logp_raw
    sampler_logp_unit: jax.Array  # [T, E, R] float32: the same at temperature 1
    sampler_entropy: jax.Array  # [T, E, R] float32: the policy's entropy at temperature 1
    value: jax.Array  # [T, E] float32: the rollout's value of the turn's observation
    reward: jax.Array  # [T, E] float32: the env's reward for the step
    terminated: jax.Array  # [T, E] bool
    truncated: jax.Array  # [T, E] bool
    next_value: jax.Array  # [T, E] float32: the value of the observation after the step
    format_reward: jax.Array  # [T, E] float32: the reply-format bonus / penalty
    teacher_ids: jax.Array  # [T, E, R_teacher] int32 (SFT variants)
    teacher_label_mask: jax.Array  # [T, E, R_teacher] bool (SFT variants)
    image_grid_thw: ImageGrid = struct.field(pytree_node=False, default=(1, 4, 4))

    @property
    def turns(self) -> int:
        return self.reward.shape[0]

    @property
    def envs(self) -> int:
        return self.reward.shape[1]

    @property
    def num_samples(self) -> int:
        return self.turns * self.envs

    def check_shapes(self) -> None:
        """Raises one ValueError line naming the first field whose shape disagrees with the rest."""
        turns, envs = self.reward.shape[:2] if self.reward.ndim == 2 else (None, None)
        if turns is None:
            raise ValueError(f"Batch.reward has shape {self.reward.shape}: expected [turns, envs]")
        prompt_len = self.prompt_ids.shape[-1]
        response_len = self.response_ids.shape[-1]
        teacher_len = self.teacher_ids.shape[-1]
        patches = (math.prod(self.image_grid_thw),)
        expected = {
            "prompt_ids": (turns, envs, prompt_len),
            "prompt_mask": (turns, envs, prompt_len),
            "image_patches": (turns, envs, *patches, self.image_patches.shape[-1]),
            "response_ids": (turns, envs, response_len),
            "response_mask": (turns, envs, response_len),
            "thought_mask": (turns, envs, response_len),
            "action_mask": (turns, envs, response_len),
            "sampler_logp": (turns, envs, response_len),
            "sampler_logp_unit": (turns, envs, response_len),
            "sampler_entropy": (turns, envs, response_len),
            "teacher_ids": (turns, envs, teacher_len),
            "teacher_label_mask": (turns, envs, teacher_len),
            **{
                name: (turns, envs)
                for name in (
                    "valid",
                    "action",
                    "value",
                    "terminated",
                    "truncated",
                    "next_value",
                    "format_reward",
                )
            },
        }
        for name, shape in expected.items():
            found = tuple(getattr(self, name).shape)
            if found != shape:
                raise ValueError(
                    f"Batch.{name} has shape {found}: expected {shape} "
                    f"([turns={turns}, envs={envs}] and image_grid_thw={self.image_grid_thw})"
                )

    @classmethod
    def dummy(
        cls,
        turns: int,
        envs: int,
        prompt_len: int,
        response_len: int,
        patch_dim: int,
        image_grid_thw: ImageGrid = (1, 4, 4),
        teacher_len: int = 1,
    ) -> Batch:
        """An all-zero batch of the given shapes (every reply valid and non-terminal): for
        `jax.eval_shape`, sharding specs and tests that fill in the fields they need."""
        grid = tuple(int(x) for x in image_grid_thw)
        lead = (turns, envs)
        patches = grid[0] * grid[1] * grid[2]
        zeros_i = lambda *tail: jnp.zeros((*lead, *tail), jnp.int32)
        zeros_f = lambda *tail: jnp.zeros((*lead, *tail), jnp.float32)
        zeros_b = lambda *tail: jnp.zeros((*lead, *tail), bool)
        return cls(
            prompt_ids=zeros_i(prompt_len),
            prompt_mask=zeros_i(prompt_len),
            image_patches=zeros_f(patches, patch_dim),
            response_ids=zeros_i(response_len),
            response_mask=zeros_b(response_len),
            thought_mask=zeros_b(response_len),
            action_mask=zeros_b(response_len),
            valid=jnp.ones(lead, bool),
            action=zeros_i(),
            sampler_logp=zeros_f(response_len),
            sampler_logp_unit=zeros_f(response_len),
            sampler_entropy=zeros_f(response_len),
            value=zeros_f(),
            reward=zeros_f(),
            terminated=zeros_b(),
            truncated=zeros_b(),
            next_value=zeros_f(),
            format_reward=zeros_f(),
            teacher_ids=zeros_i(teacher_len),
            teacher_label_mask=zeros_b(teacher_len),
            image_grid_thw=grid,
        )
