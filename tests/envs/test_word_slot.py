"""`envs.agent.word_slot`: changing text from a fixed vocabulary in the prompt (how a Python env such
as ALFWorld writes its observation and admissible commands). The jitted assembly of a text-room
Python env's prompt equals the host tokenization of the same words, for texts of every length up
to the field's size, and the template's length bound holds."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from gtr_turbo_jax.envs.agent import AgentSpec, word_slot
from gtr_turbo_jax.envs.host import PythonEnv
from gtr_turbo_jax.text.prompts import assemble, encode_prompt, make_template
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path

VOCAB = ("you", "see", "a", "cabinet", "drawer", "1", "2", "go", "to", "open", "the", "apple.")
WORDS = 8  # the fields' size: texts up to 8 words, -1 after the end


class TextRoom(PythonEnv):
    """A stand-in for ALFWorld's text: an observation and the commands, as word ids."""

    action_names = ("1", "2", "3")
    agent_spec = AgentSpec(
        texts={"brief": "You see:{observation} Commands:{commands}"},
        replies={"brief": '{"thoughts": "...", "action": "1" or "2" or "3"}'},
        slots=lambda env: {name: word_slot(name, VOCAB) for name in ("observation", "commands")},
    )
    image_shape = (28, 28, 3)

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        fields = {}
        for name in ("observation", "commands"):
            ids = np.full(WORDS, -1, np.int32)
            length = int(rng.integers(0, WORDS + 1))
            ids[:length] = rng.integers(0, len(VOCAB), length)
            fields[name] = ids
        return {"image": np.zeros(self.image_shape, np.uint8), **fields}


def test_word_slots_assemble_as_the_host_tokenizes_the_words():
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    env = TextRoom()
    name = f"{__name__}:TextRoom"
    template = make_template(name, env, tokenizer, 4, style="brief")
    lengths = set()
    for seed in range(12):
        fields = {k: v for k, v in env.reset(seed).items() if k != "image"}
        ids, mask = jax.device_get(assemble(template, fields))
        expected = encode_prompt(tokenizer, template, env, fields, 4)
        np.testing.assert_array_equal(ids[mask], expected)
        assert mask.sum() <= template.max_length
        lengths.add(int((fields["observation"] >= 0).sum()))
    assert len(lengths) > 3  # short, long and empty texts were all assembled
    words = [VOCAB[i] for i in fields["observation"] if i >= 0]
    assert f"You see:{''.join(' ' + w for w in words)} Commands:" in tokenizer.decode(expected)


class TightRoom(TextRoom):
    """TextRoom with one token per word at most: long texts are cut."""

    agent_spec = AgentSpec(
        texts=TextRoom.agent_spec.texts,
        replies=TextRoom.agent_spec.replies,
        slots=lambda env: {
            name: word_slot(name, VOCAB, tokens_per_word=1.0)
            for name in ("observation", "commands")
        },
    )


def test_a_token_budget_cuts_after_the_last_whole_word_within_it():
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    env, loose_env = TightRoom(), TextRoom()
    template = make_template(f"{__name__}:TightRoom", env, tokenizer, 4, style="brief")
    loose = make_template(f"{__name__}:TextRoom", loose_env, tokenizer, 4, style="brief")
    lengths = template.tables["observation"][1]
    assert template.budgets == {"observation": WORDS, "commands": WORDS}  # ceil(8 words x 1.0)
    # Each slot's bound is its budget (8), not 8 positions at the longest word.
    static = sum(len(piece) for piece in template.pieces if isinstance(piece, tuple))
    assert template.max_length == static + 2 * WORDS < loose.max_length
    cut = 0
    for seed in range(24):
        fields = {k: v for k, v in env.reset(seed).items() if k != "image"}
        ids, mask = jax.device_get(assemble(template, fields))
        np.testing.assert_array_equal(ids[mask], encode_prompt(tokenizer, template, env, fields, 4))
        words = [int(i) for i in fields["observation"] if i >= 0]
        kept = int(np.sum(np.cumsum(lengths[words]) <= WORDS)) if words else 0
        text = tokenizer.decode(ids[mask])
        assert f"You see:{''.join(' ' + VOCAB[w] for w in words[:kept])} Commands:" in text
        cut += kept < len(words)
    assert cut > 3  # texts were cut, and others were not


def test_a_word_with_spaces_is_refused():
    with pytest.raises(ValueError, match="without surrounding spaces"):
        word_slot("observation", ("go", " to"))
    with pytest.raises(ValueError, match="tokens_per_word=0"):
        word_slot("observation", ("go", "to"), tokens_per_word=0)
