"""Tokenizer and processor loading (transformers, torch-free) and the host-side helpers of prompts.

A model directory is a Hugging Face directory (a real Qwen2.5-VL checkpoint or the shipped tiny
one, `tiny_tokenizer_path()`): `tokenizer.json` + `tokenizer_config.json`, the chat template, and
`preprocessor_config.json` for the Qwen2-VL image processor.

Torch-free processor: in transformers v5, `AutoProcessor.from_pretrained` on a Qwen2.5-VL directory
also builds the *video* processor, and every v5 video processor needs torch + torchvision (even
constructing `Qwen2_5_VLProcessor(..., video_processor=None)` fails its class check without
torchvision). Our agents only see images, so `load_processor` builds `ImageOnlyQwen2_5_VLProcessor`:
the same processor class (same chat template, same `<|image_pad|>` expansion) with the video slot
removed from its signature, and the PIL backend of the Qwen2-VL image processor. Where torch and
torchvision are installed, `AutoProcessor.from_pretrained(path)` loads the same directory as the
stock `Qwen2_5_VLProcessor`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen2_5_VLProcessor,
)

IMAGE_PAD_TOKEN = "<|image_pad|>"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # either set suffices
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def tiny_tokenizer_path() -> Path:
    """The shipped tiny tokenizer/processor directory (built by `tools/build_tiny_tokenizer.py`)."""
    return Path(str(resources.files("gtr_turbo_jax") / "assets" / "tiny_tokenizer"))


def _check_tokenizer_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {str(path)!r} does not exist; pass a Hugging Face model "
            f"directory (e.g. {str(tiny_tokenizer_path())!r})"
        )
    has_model = any(all((path / f).is_file() for f in files) for files in TOKENIZER_FILES)
    if not has_model or not (path / TOKENIZER_CONFIG).is_file():
        raise FileNotFoundError(
            f"{str(path)!r} has no tokenizer files: expected {TOKENIZER_CONFIG} and tokenizer.json "
            "(or vocab.json + merges.txt)"
        )
    return path


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(path)` for a local directory, with one-line errors."""
    path = _check_tokenizer_dir(path)
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers/tokenizers raise many types for a broken file
        raise ValueError(f"cannot load the tokenizer in {str(path)!r}: {_first_line(err)}") from err


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without the video processor (which needs torch + torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )


def load_processor(path: str | Path) -> ImageOnlyQwen2_5_VLProcessor:
    """The Qwen2.5-VL processor of a local directory (tokenizer + chat template + PIL image processor)."""
    path = _check_tokenizer_dir(path)
    if not (path / PREPROCESSOR_CONFIG).is_file():
        raise FileNotFoundError(
            f"{str(path)!r} has no {PREPROCESSOR_CONFIG}: a processor needs the image processor config"
        )
    tokenizer = load_tokenizer(path)
    if tokenizer.chat_template is None:
        raise ValueError(
            f"{str(path)!r} has no chat template (chat_template.jinja or in {TOKENIZER_CONFIG})"
        )
    try:
        image_processor = AutoImageProcessor.from_pretrained(
            str(path), backend="pil", local_files_only=True
        )
    except Exception as err:
        raise ValueError(
            f"cannot load the image processor in {str(path)!r}: {_first_line(err)}"
        ) from err
    return ImageOnlyQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the tokens the rollout needs, read from a tokenizer (never hard-coded)."""

    eos: int  # the tokenizer's eos (<|im_end|> for Qwen2.5-VL instruct models): ends a reply
    pad: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of one token of the vocabulary (special or not); ValueError if it is not one token."""
    ids = tokenizer.convert_tokens_to_ids([token])
    if ids[0] is None or token not in tokenizer.get_vocab():
        raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
    return int(ids[0])


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> SpecialTokenIds:
    """Ids of the chat and vision special tokens, by name, from `tokenizer`."""
    if tokenizer.eos_token is None or tokenizer.pad_token is None:
        raise ValueError(
            f"the tokenizer needs an eos and a pad token, got eos={tokenizer.eos_token!r} "
            f"pad={tokenizer.pad_token!r}"
        )
    return SpecialTokenIds(
        eos=token_id(tokenizer, tokenizer.eos_token),
        pad=token_id(tokenizer, tokenizer.pad_token),
        im_start=token_id(tokenizer, "<|im_start|>"),
        im_end=token_id(tokenizer, "<|im_end|>"),
        vision_start=token_id(tokenizer, "<|vision_start|>"),
        vision_end=token_id(tokenizer, "<|vision_end|>"),
        image_pad=token_id(tokenizer, IMAGE_PAD_TOKEN),
    )


def image_user_turn(text: str) -> dict[str, Any]:
    """A user message with one image placeholder before `text` (the agent's per-turn prompt)."""
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    num_image_tokens: int | Sequence[int],
    *,
    add_generation_prompt: bool = True,
) -> np.ndarray:
    """Token ids (`int32[L]`) of `messages` under the chat template, each `<|image_pad|>` expanded.

    `num_image_tokens`: merged-patch count per image (`image.num_image_tokens`), one int for all
    images or one per image in order. The result equals what the processor returns for the same
    messages and images, without needing the images themselves.
    """
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    pieces = text.split(IMAGE_PAD_TOKEN)
    num_images = len(pieces) - 1
    counts = (
        [num_image_tokens] * num_images
        if isinstance(num_image_tokens, int)
        else list(num_image_tokens)
    )
    if len(counts) != num_images or any(c < 1 for c in counts):
        raise ValueError(
            f"num_image_tokens={num_image_tokens!r} does not fit the {num_images} image "
            "placeholder(s) of the chat: pass one positive int, or one per image"
        )
    expanded = pieces[0] + "".join(IMAGE_PAD_TOKEN * c + p for c, p in zip(counts, pieces[1:]))
    ids = tokenizer(expanded, add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=np.int32)
