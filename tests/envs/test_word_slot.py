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


def test_a_word_with_spaces_is_refused():
    with pytest.raises(ValueError, match="without surrounding spaces"):
        word_slot("observation", ("go", " to"))
