"""GTR-Turbo in JAX/Flax: multi-turn RL for VLM agents, guided by a teacher merged from the policy's
own past checkpoints."""

import logging

__version__ = "0.1.0"


class _NoTorchNotice(logging.Filter):
    """transformers announces at import that PyTorch is missing; this library uses only its
    tokenizers and processors, so that line would only worry a user. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("PyTorch was not found.")


logging.getLogger("transformers").addFilter(_NoTorchNotice())
