"""`UpdateConfig`: the static settings of one update (hashable: a `jax.jit` static argument).

Defaults are the paper's (METHOD.md sections 2-4). Values are checked in Python when the config is
built, each failure one ValueError line naming the field and what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import optax

MODES = ("ppo", "gtr", "turbo_sft", "turbo_kl")
MERGE_METHODS = ("ties", "linear", "ema")
MERGE_SPACES = ("dense", "peft", "factored")
MERGE_WINDOWS = ("all", "ring")
FORMAT_REWARD_PLACEMENTS = ("after_gae", "in_gae", "ignore")
KL_ESTIMATORS = ("k1_clipped", "k1", "abs", "k3", "forward")
KL_SCOPES = ("thought", "thought_action")
RATIO_LEVELS = ("sequence", "token")
ADVANTAGES = ("gae", "group")
DAGGER_SAMPLINGS = ("reservoir", "ring")
TEACHER_SOURCES = ("merged", "initial", "external")
KL_CONTEXTS = ("image", "blind")


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    """mode: `ppo` (RL4VLM), `gtr` (PPO + SFT on corrections that arrive in the batch),
    `turbo_sft` (the same with the merged teacher's replies), `turbo_kl` (PPO with the thought KL to
    the merged teacher in the advantage).

    PPO's log-prob is `thought_lambda * sum(thought log-probs) + sum(action log-probs)`;
    `thought_skip_tokens=2` leaves the reply's first two tokens out of the thought sum, as the
    authors' code does (0: every thought token, the method as written).
    PPO: `ratio_level` `sequence` (RL4VLM: one ratio per reply on the lambda-weighted log-prob)
    or `token` (`rl.token_ppo_loss`: each token's ratio clipped on its own, a lambda-weighted token
    mean). The value head's Adam steps are `value_lr_scale` times the policy's (1: the paper's one
    rate; a freshly initialised critic at a policy rate of 1e-5 barely moves in a short run).
    `value_backbone_grad=False` stops the value loss at the head's input: the critic still reads
    the shared backbone's features but no longer moves them (under Adam, a fresh critic's loss,
    ~10x the policy's, otherwise sets the direction of the backbone's first steps).
    Old log-probs and values are the rollout's (RL4VLM stores them at acting time), which the
    update's first forward would recompute exactly; `rescore=True` recomputes them (one more
    forward of the policy per sample; the `sampler_logp_gap` metric then reads the difference).
    `ppo_epochs` passes over the batch; each pass is split into optimizer steps of
    `minibatch_size * grad_accum_steps` samples, whose gradients are averaged over
    `grad_accum_steps` micro-batches of `minibatch_size` (the paper: 128 samples per optimizer step).
    `pack_trained` (not the paper's; group advantages leave part of the batch untrained): each
    epoch takes the trained samples first and skips the steps that hold none (`rl.packed_steps`),
    so those samples cost no forward and the update runs fewer, fuller Adam steps
    (`optimizer_steps` counts them).
    The learning rate follows a cosine from `learning_rate` to `final_learning_rate` over
    `lr_decay_updates` updates, constant within an update (as RL4VLM's per-update scheduler),
    scaled by `(u + 1) / warmup_updates` for the first `warmup_updates` updates (not the paper's;
    0: none): Adam's first steps are sign steps of the full rate on every parameter, whatever the
    gradient's quality.

    SFT (`gtr`, `turbo_sft`): each PPO micro-batch of `minibatch_size` rows is paired with
    `sft_minibatch_size` rows drawn uniformly from the DAgger buffer, loss `L_PPO + sft_coef *
    L_SFT`, both means over their rows. GTR's code pairs one buffer row with each PPO row (its
    micro-batch is one sample); the mean over uniform draws has the same expectation for any number
    of rows, so fewer rows keep the loss and its expected gradient and only add variance to the SFT
    term, while the SFT forward (a second forward + backward per micro-batch) shrinks with them.
    Default (`None`): a quarter of `minibatch_size` (at least 1): over the paper's 4 epochs, one
    buffer draw per sample of the batch per update. GTR never clears its buffer, so its draws are
    uniform over every correction of the run: `dagger_sampling="reservoir"` keeps such a uniform
    sample in `dagger_capacity` rows (`rl.reservoir_slots`); `ring` keeps the latest rows only.
    `turbo_sft` samples an unparseable teacher reply again up to `teacher_retries` times
    (`train.sft_targets.retry_temperatures`).

    Advantages, `advantage`: `gae` (the paper's turn-level GAE on the critic's values) or `group`
    (`rl.group_advantages`, GiGPO: the rollout plays each level `group_size` times from the same
    start; an episode's return minus its group's mean, plus `step_weight` times a step's
    return-to-go minus the mean over the group's steps from the same state; no critic in the
    advantage, the value head still fits the returns-to-go). Only each env's first episode of the
    rollout counts: the rollout must be long enough for it to end.

    Format reward (`Batch.format_reward`), `format_reward_placement`: `after_gae` adds it to the
    advantage after GAE (the value target includes it), as GTR's code (`returns = gae + V +
    format`), inherited by GTR-Turbo; `in_gae` adds it to the env reward before GAE (discounted and
    propagated to earlier turns); `ignore` drops it: RL4VLM, the `ppo` baseline, has no format
    reward (its rewards are the env's only). Default (`None`): `ignore` in `ppo`, `after_gae` in
    the other modes (see `format_reward_mode`).

    Teacher (turbo modes), `teacher_source`: `merged` (GTR-Turbo), `initial`, the starting model
    kept as the teacher for the whole run (the paper's static-teacher ablation), or `external`
    (`turbo_kl` only): a fixed model loaded from the local HF directory `teacher_path`, any size,
    the policy's tokenizer and image patches (On-Policy Distillation's teacher). `kl_context`:
    the teacher scores the replies with the image in its prompt (`image`, METHOD.md 4.3) or
    without it (`blind`: the vision tokens masked out, as the authors' released code).
    Merge (turbo modes, `merged`): every `merge_interval` updates the teacher becomes `theta_0 + merge(tau)`
    (`ties` or `linear`, with SMA weights) or `alpha * policy + (1 - alpha) * teacher` (`ema`).
    Snapshots are taken after every epoch. `merge_window`: `all` (the paper's SMA over every
    snapshot so far, kept as running sums: `rl.running_sums_push`) or `ring` (the last
    `snapshot_capacity` snapshots; a teacher that lags the policy by a few updates only).
    `merge_space`: `dense` (the default: the paper's semantics) merges the per-kernel products
    `a @ b * scaling`: the teacher is a dense delta per adapted kernel (a base kernel's bytes
    each, float32), added to the base kernels inside the teacher's forward (see
    `train.teacher.teacher_weights`), and the whole-run SMA keeps four float32 running sums of
    the products (docs/scaling.md: ~64 GiB on the 3B preset, split by FSDP); `peft` is the
    authors' arithmetic exactly, adapter-sized: PEFT's `add_weighted_adapter(snapshots, SMA
    weights, "ties" | "linear")` on the snapshots' adapters themselves (not their task vectors),
    each factor merged apart with weights `sqrt(1/N)` and PEFT's TIES (`rl.merge_lora(...,
    peft_compat=True)`), so the teacher's delta shrinks as ~1/N of the snapshots' (LoRA only);
    `factored` merges the LoRA `a` and `b` task vectors separately with the paper's TIES
    normalisation (an approximation: adapter-sized, the teacher an adapter set like the
    policy's).
    Without LoRA `factored` and `dense` coincide (every parameter is merged as a full weight).
    """

    mode: str = "turbo_kl"
    gamma: float = 0.9
    gae_lambda: float = 0.95
    thought_lambda: float = 0.5
    thought_skip_tokens: int = 0
    clip_eps: float = 0.1
    value_clip_eps: float | None = 0.1
    value_coef: float = 0.5
    ratio_guard: float | None = None
    ratio_level: str = "sequence"
    rescore: bool = False
    advantage: str = "gae"
    group_size: int = 4
    step_weight: float = 1.0
    value_lr_scale: float = 1.0
    value_backbone_grad: bool = True
    ppo_epochs: int = 4
    pack_trained: bool = False
    minibatch_size: int = 16
    grad_accum_steps: int = 8
    learning_rate: float = 1e-5
    final_learning_rate: float = 1e-9
    lr_decay_updates: int = 25
    warmup_updates: int = 0
    adam_eps: float = 1e-7
    grad_clip: float = 0.01
    temperature: float = 1.0  # of the PPO log-probs: the sampler's temperature (its logp_raw)
    advantage_eps: float = 1e-5
    kl_estimator: str = "k1_clipped"
    kl_clip: float = 10.0
    kl_beta: float = 1.0
    kl_invalid_value: float = 100.0
    kl_scope: str = "thought"
    kl_context: str = "image"
    sft_coef: float = 1.0
    sft_minibatch_size: int | None = None
    format_reward_placement: str | None = None
    teacher_source: str = "merged"
    teacher_path: str = ""
    merge_method: str = "ties"
    merge_space: str = "dense"
    merge_density: float = 0.8
    merge_scale: float = 1.0
    ema_alpha: float = 0.5
    merge_interval: int = 1
    merge_window: str = "all"
    snapshot_capacity: int = 16
    dagger_capacity: int = 1024
    dagger_sampling: str = "reservoir"
    teacher_retries: int = 3

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("merge_method", self.merge_method, MERGE_METHODS)
        _choice("merge_space", self.merge_space, MERGE_SPACES)
        _choice("merge_window", self.merge_window, MERGE_WINDOWS)
        if self.format_reward_placement is not None:
            _choice(
                "format_reward_placement", self.format_reward_placement, FORMAT_REWARD_PLACEMENTS
            )
        _choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("kl_scope", self.kl_scope, KL_SCOPES)
        _choice("ratio_level", self.ratio_level, RATIO_LEVELS)
        _choice("advantage", self.advantage, ADVANTAGES)
        _choice("dagger_sampling", self.dagger_sampling, DAGGER_SAMPLINGS)
        _choice("teacher_source", self.teacher_source, TEACHER_SOURCES)
        _choice("kl_context", self.kl_context, KL_CONTEXTS)
        if (self.teacher_source == "external") != bool(self.teacher_path):
            raise ValueError(
                "UpdateConfig.teacher_path names the model of teacher_source='external' (a local "
                f"HF directory), and only it: got teacher_source={self.teacher_source!r}, "
                f"teacher_path={self.teacher_path!r}"
            )
        if self.merge_space == "peft" and self.merge_method == "ema":
            raise ValueError(
                "UpdateConfig.merge_space='peft' is PEFT's add_weighted_adapter, a ties or linear "
                "merge of the snapshots: merge_method='ema' is not supported"
            )
        if self.teacher_source == "external" and self.mode == "turbo_sft":
            raise ValueError(
                "UpdateConfig.teacher_source='external' guides by the thought KL: "
                "mode='turbo_sft' is not supported (use turbo_kl)"
            )
        inf = math.inf
        for name, low, high, low_open in (
            ("gamma", 0.0, 1.0, False),
            ("gae_lambda", 0.0, 1.0, False),
            ("thought_lambda", 0.0, 1.0, False),
            ("clip_eps", 0.0, inf, True),
            ("value_coef", 0.0, inf, False),
            ("value_lr_scale", 0.0, inf, False),
            ("learning_rate", 0.0, inf, True),
            ("final_learning_rate", 0.0, inf, False),
            ("adam_eps", 0.0, inf, True),
            ("grad_clip", 0.0, inf, True),
            ("temperature", 0.0, inf, True),
            ("advantage_eps", 0.0, inf, True),
            ("kl_clip", 0.0, inf, True),
            ("kl_beta", 0.0, inf, False),
            ("kl_invalid_value", 0.0, inf, False),
            ("sft_coef", 0.0, inf, False),
            ("step_weight", 0.0, inf, False),
            ("merge_density", 0.0, 1.0, True),
            ("merge_scale", 0.0, inf, False),
            ("ema_alpha", 0.0, 1.0, False),
        ):
            _in_range(name, getattr(self, name), low, high, low_open)
        if self.value_clip_eps is not None:
            _in_range("value_clip_eps", self.value_clip_eps, 0.0, inf, True)
        if self.ratio_guard is not None:
            _in_range("ratio_guard", self.ratio_guard, 1.0, inf, True)
        optional_sizes = ("sft_minibatch_size",) if self.sft_minibatch_size is not None else ()
        for name in (
            *optional_sizes,
            "ppo_epochs",
            "minibatch_size",
            "grad_accum_steps",
            "lr_decay_updates",
            "merge_interval",
            "snapshot_capacity",
            "dagger_capacity",
            "warmup_updates",
            "group_size",
            "teacher_retries",
            "thought_skip_tokens",
        ):
            value = getattr(self, name)
            low = 0 if name in ("warmup_updates", "teacher_retries", "thought_skip_tokens") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"UpdateConfig.{name}={value!r} is out of range: expected an int >= {low}"
                )
        if self.final_learning_rate > self.learning_rate:
            raise ValueError(
                f"UpdateConfig.final_learning_rate={self.final_learning_rate!r} is out of range: "
                f"expected a value <= learning_rate={self.learning_rate!r}"
            )

    @property
    def samples_per_step(self) -> int:
        """Samples behind one optimizer step."""
        return self.minibatch_size * self.grad_accum_steps

    @property
    def uses_teacher(self) -> bool:
        """The merged teacher (snapshots, merges) exists in the turbo modes only."""
        return self.mode in ("turbo_sft", "turbo_kl")

    @property
    def uses_sft(self) -> bool:
        return self.mode in ("gtr", "turbo_sft")

    @property
    def uses_snapshots(self) -> bool:
        """The snapshot ring buffer (and theta_0 for task vectors) exist for TIES / linear only."""
        return self.uses_teacher and self.merge_method != "ema" and not self.external_teacher

    @property
    def external_teacher(self) -> bool:
        """A turbo mode whose teacher is a separate model (`teacher_path`), not the policy's."""
        return self.uses_teacher and self.teacher_source == "external"

    @property
    def rollout_group_size(self) -> int:
        """Envs that play the same level from the same start: `group_size` under `group`."""
        return self.group_size if self.advantage == "group" else 1

    @property
    def sft_rows(self) -> int:
        """DAgger rows paired with each PPO micro-batch (`sft_minibatch_size` resolved)."""
        if self.sft_minibatch_size is not None:
            return self.sft_minibatch_size
        return max(1, self.minibatch_size // 4)

    @property
    def format_reward_mode(self) -> str:
        """`format_reward_placement` resolved: `ignore` for `ppo`, else `after_gae`."""
        if self.format_reward_placement is not None:
            return self.format_reward_placement
        return "ignore" if self.mode == "ppo" else "after_gae"

    def replace(self, **changes: object) -> UpdateConfig:
        return dataclasses.replace(self, **changes)


def learning_rate_at(config: UpdateConfig, update: jax.Array) -> jax.Array:
    """The learning rate of update number `update` (0-based): a linear warmup over the first
    `warmup_updates` times a cosine that ends flat."""
    update = update.astype(jnp.float32)
    progress = jnp.minimum(update / config.lr_decay_updates, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    warmup = jnp.minimum((update + 1.0) / max(config.warmup_updates, 1), 1.0)
    span = config.learning_rate - config.final_learning_rate
    return warmup * (config.final_learning_rate + span * cosine)


def make_optimizer(config: UpdateConfig) -> optax.GradientTransformation:
    """Global-norm clip, then Adam whose learning rate the update step sets (`inject_hyperparams`)."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.inject_hyperparams(optax.adam)(
            learning_rate=config.learning_rate, eps=config.adam_eps
        ),
    )


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(
            f"UpdateConfig.{name}={value!r} is not supported: expected one of {', '.join(choices)}"
        )


def _in_range(name: str, value: object, low: float, high: float, low_open: bool) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(
            f"UpdateConfig.{name}={value!r} is out of range: expected a value in {interval}"
        )
