"""Training: the state pytree, the one compiled update step, the update configuration."""

from gtr_turbo_jax.train.config import UpdateConfig, learning_rate_at, make_optimizer
from gtr_turbo_jax.train.state import DaggerBuffer, ModelDefs, TrainState, init_train_state
from gtr_turbo_jax.train.update import check_compatible, update_step

__all__ = [
    "DaggerBuffer",
    "ModelDefs",
    "TrainState",
    "UpdateConfig",
    "check_compatible",
    "init_train_state",
    "learning_rate_at",
    "make_optimizer",
    "update_step",
]
