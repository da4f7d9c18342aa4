"""The shipped tiny tokenizer/processor: reproducible, Qwen-shaped, torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gtr_turbo_jax.text.image import num_image_tokens
from gtr_turbo_jax.text.tokenizer import (
    encode_chat,
    image_user_turn,
    load_processor,
    load_tokenizer,
    special_token_ids,
    tiny_tokenizer_path,
    token_id,
)

SPECIAL_IDS = {
    "<|endoftext|>": 0,
    "<|im_start|>": 1,
    "<|im_end|>": 2,
    "<|vision_start|>": 3,
    "<|vision_end|>": 4,
    "<|vision_pad|>": 5,
    "<|image_pad|>": 6,
    "<|video_pad|>": 7,
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_tokenizer_path())


@pytest.fixture(scope="module")
def processor():
    return load_processor(tiny_tokenizer_path())


@pytest.fixture(scope="module")
def build_tiny_tokenizer(load_tool):
    """tools/build_tiny_tokenizer.py, the builder of the shipped files."""
    return load_tool("build_tiny_tokenizer")


def test_rebuild_equals_shipped(tmp_path, build_tiny_tokenizer):
    written = build_tiny_tokenizer.build(tmp_path)
    shipped = sorted(p.name for p in tiny_tokenizer_path().iterdir())
    assert sorted(p.name for p in written) == shipped
    for path in written:
        assert path.read_bytes() == (tiny_tokenizer_path() / path.name).read_bytes(), path.name
    assert sum(p.stat().st_size for p in written) < 200_000


def test_vocab_and_special_ids(tokenizer):
    assert len(tokenizer) == 1024
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_IDS} == SPECIAL_IDS
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    ids = special_token_ids(tokenizer)
    assert (ids.eos, ids.pad, ids.im_start, ids.im_end) == (2, 0, 1, 2)
    assert (ids.vision_start, ids.vision_end, ids.image_pad) == (3, 4, 6)
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        token_id(tokenizer, "<|box_start|>")


def test_pipeline_is_qwen2s(tokenizer, build_tiny_tokenizer):
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    assert backend["normalizer"]["type"] == "NFC"
    split, byte_level = backend["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"]["Regex"] == build_tiny_tokenizer.QWEN2_SPLIT_REGEX
    assert byte_level["type"] == "ByteLevel" and backend["decoder"]["type"] == "ByteLevel"
    # Digits are split one by one, as in Qwen2: "2024" is four tokens.
    assert [tokenizer.decode([i]) for i in tokenizer.encode("2024")] == ["2", "0", "2", "4"]
    # Nothing is added around plain text (no BOS/EOS).
    assert tokenizer.decode(tokenizer.encode("hi")) == "hi"


def test_domain_text_is_compressed(tokenizer):
    reply = '{"thoughts": "The box is at (3, 4) and the target is at (4, 4).", "action": "Down"}'
    assert len(tokenizer.encode(reply)) < len(reply.encode("utf-8")) / 2


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=60))
def test_round_trip_unicode(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


@pytest.mark.parametrize(
    "text", ["Sokoban: # _ O X √ P S", "😀 日本語 Ünïcödé\t\r\n  ", "e\u0301", '{"a": "\\n"}']
)
def test_round_trip_examples(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == unicodedata.normalize("NFC", text)


def test_chat_template_puts_vision_tokens_in_order(tokenizer):
    text = tokenizer.apply_chat_template(
        [image_user_turn("Where is the box?")], tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Where is the box?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_processor_expands_image_pad(processor, tokenizer):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(168, 224, 3), dtype=np.uint8)
    text = processor.apply_chat_template([image_user_turn("Go.")], add_generation_prompt=True)
    out = processor(text=[text], images=[image], return_tensors="np")
    t, h, w = out["image_grid_thw"][0]
    assert (t, h, w) == (1, 12, 16)
    ids = out["input_ids"][0]
    pads = np.flatnonzero(ids == 6)
    assert len(pads) == t * h * w // 4 == 48
    # One contiguous run, between vision_start and vision_end.
    assert np.all(np.diff(pads) == 1) and ids[pads[0] - 1] == 3 and ids[pads[-1] + 1] == 4
    # The host-side encoder gives the same ids without the image.
    ours = encode_chat(tokenizer, [image_user_turn("Go.")], num_image_tokens(168, 224))
    np.testing.assert_array_equal(ours, ids)


def test_encode_chat_counts_per_image(tokenizer):
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "x"}],
        }
    ]
    ids = encode_chat(tokenizer, messages, [4, 9])
    runs = np.split(
        np.flatnonzero(ids == 6), np.flatnonzero(np.diff(np.flatnonzero(ids == 6)) > 1) + 1
    )
    assert [len(r) for r in runs] == [4, 9]
    with pytest.raises(ValueError, match="num_image_tokens"):
        encode_chat(tokenizer, messages, [4])


def test_loads_without_torch():
    """Tokenizer, processor and one processed chat with torch (and torchvision) unimportable."""
    script = f"""
import sys
sys.modules["torch"] = None
sys.modules["torchvision"] = None
import numpy as np
from gtr_turbo_jax.text.tokenizer import image_user_turn, load_processor
processor = load_processor({str(tiny_tokenizer_path())!r})
text = processor.apply_chat_template([image_user_turn("hi")], add_generation_prompt=True)
out = processor(text=[text], images=[np.zeros((56, 84, 3), np.uint8)], return_tensors="np")
print(int((out["input_ids"] == 6).sum()), type(processor).__mro__[1].__name__)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["6", "Qwen2_5_VLProcessor"]


def test_auto_processor_with_torchvision():
    """Where torch + torchvision are installed, the stock AutoProcessor loads the same directory."""
    pytest.importorskip("torchvision")
    from transformers import AutoProcessor

    auto = AutoProcessor.from_pretrained(str(tiny_tokenizer_path()))
    assert type(auto).__name__ == "Qwen2_5_VLProcessor"
    image = np.zeros((56, 84, 3), np.uint8)
    text = auto.apply_chat_template([image_user_turn("hi")], add_generation_prompt=True)
    assert (
        int((auto(text=[text], images=[image], return_tensors="np")["input_ids"] == 6).sum()) == 6
    )


def test_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_processor(tmp_path / "nope")


def test_directory_without_tokenizer_files_raises(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        load_processor(tmp_path)


def test_processor_without_image_config_raises(tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((tiny_tokenizer_path() / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        load_processor(tmp_path)


def test_corrupt_tokenizer_file_raises_one_line(tmp_path):
    (tmp_path / "tokenizer_config.json").write_bytes(
        (tiny_tokenizer_path() / "tokenizer_config.json").read_bytes()
    )
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot load the tokenizer") as info:
        load_tokenizer(tmp_path)
    assert "\n" not in str(info.value)
