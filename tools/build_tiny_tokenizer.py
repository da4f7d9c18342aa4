"""Build the tiny Qwen2-style tokenizer + Qwen2.5-VL processor files shipped in `assets/`.

    python tools/build_tiny_tokenizer.py --out gtr_turbo_jax/assets/tiny_tokenizer

The result is a Hugging Face model directory without weights: `AutoTokenizer` and `AutoProcessor`
load it exactly as they load a real Qwen2.5-VL checkpoint, so tiny test models run the same code
path as real ones. The tokenizer is a byte-level BPE with Qwen2's normaliser (NFC), pre-tokeniser
(split regex + byte-level) and byte-level decoder, so any text round-trips; 1024 tokens in all:
the 8 special tokens below (ids 0..7, which the tiny model config relies on), the 256 byte
symbols, and 760 merges learned from a corpus written here (the text an agent reads and writes).

Every run writes byte-identical files: the corpus is enumerated (no RNG), the `tokenizers` BPE
trainer is deterministic (ties between equally frequent pairs are broken by pair ids), and every
JSON file is written by this script with a fixed key order.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

VOCAB_SIZE = 1024
# The order fixes the ids (0..7): the tiny model config relies on them.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Qwen2's pre-tokenisation regex (as in transformers' Qwen2Tokenizer): contractions, letter runs
# with one optional leading non-letter, single digits, punctuation runs, newlines, spaces.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5-VL's chat template (the one published with the Qwen2.5-VL-*-Instruct checkpoints): a
# default system turn, `<|vision_start|><|image_pad|><|vision_end|>` per image, and the processor
# expands `<|image_pad|>` to one token per merged patch.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-VL's image processor defaults (Qwen2VLImageProcessor with the checkpoints' config).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": list(OPENAI_CLIP_MEAN),
    "image_std": list(OPENAI_CLIP_STD),
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}

# ---------------------------------------------------------------------------------------------
# The training corpus: what the agent reads (task rules, legal actions, state fields) and writes
# (JSON replies with thoughts), enumerated deterministically.
# ---------------------------------------------------------------------------------------------

DIRECTIONS = ("Up", "Down", "Left", "Right")
POINTS24_ACTIONS = tuple(str(n) for n in range(1, 11)) + ("+", "-", "*", "/", "(", ")", "=")
GRID_SYMBOLS = {"#": "wall", "_": "floor", "O": "target", "X": "box", "√": "box on target",
                "P": "player", "S": "player on target"}  # fmt: skip
CARD_NAMES = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")

RULES = (
    "You are an expert Sokoban player. The image shows a grid of cells seen from above. "
    "The walls are dark, the boxes are brown and the targets are marked on the floor. "
    "You control the player. Each turn you move one cell Up, Down, Left or Right. "
    "Walking into a box pushes it one cell in the same direction if the cell behind it is free. "
    "You cannot pull a box and you cannot push two boxes at once. "
    "The puzzle is solved when every box stands on a target. Avoid pushing a box into a corner.",
    "You are an expert 24 points card game player. You are observing four cards in the image. "
    "Note that 'J', 'Q' and 'K' count as '10', and each card must be used exactly once. "
    "Your goal is to output a formula that evaluates to 24 using the numbers on the cards and "
    "the operators '+', '-', '*', '/', '(', ')' and '='. Each turn you append one token to the "
    "formula. Choose '=' when the formula is complete.",
    "You are an expert card game player. You are observing two cards in the image. "
    "Your goal is to write a formula that evaluates to 12 using both numbers once, with the "
    "operators '+' and '*' and then '='. The face cards count as 10.",
    "You are playing a game called number line. The image shows a current number and a target "
    "number between 0 and 5. Each turn choose '-' to move one step to the left or '+' to move one "
    "step to the right. The game ends when the current number equals the target.",
    "You are a blackjack player. You are observing the current game state in the image: the "
    "dealer's visible card and your cards. Choose 'stand' to keep your total or 'hit' to take "
    "another card. Your goal is to get a total closer to 21 than the dealer without going over.",
    "Your reply must be a valid JSON object. First think about the state of the game, then give "
    'the action. Answer in the format {"thoughts": "...", "action": "..."} and nothing '
    "else. The action must be one of the legal actions.",
)


def _sokoban_grid(size: int, player: int, box: int, target: int) -> str:
    cells = []
    for row in range(size):
        line = []
        for col in range(size):
            inner = 0 < row < size - 1 and 0 < col < size - 1
            idx = row * size + col
            if not inner:
                line.append("#")
            elif idx == box:
                line.append("√" if box == target else "X")
            elif idx == player:
                line.append("S" if player == target else "P")
            elif idx == target:
                line.append("O")
            else:
                line.append("_")
        cells.append(" ".join(line))
    return "\n".join(cells)


def _sokoban_texts() -> Iterator[str]:
    yield "Symbols: " + ", ".join(f"'{s}' is a {name}" for s, name in GRID_SYMBOLS.items()) + "."
    for size in (6, 8):
        inner = [r * size + c for r in range(1, size - 1) for c in range(1, size - 1)]
        for i, player in enumerate(inner):
            box = inner[(i * 7 + 3) % len(inner)]
            target = inner[(i * 5 + 11) % len(inner)]
            if box == player:
                continue
            pr, pc = divmod(player, size)
            br, bc = divmod(box, size)
            tr, tc = divmod(target, size)
            move = DIRECTIONS[(pr + 2 * pc + i) % 4]
            yield f"The current map is:\n{_sokoban_grid(size, player, box, target)}"
            thoughts = (
                f"The player is at ({pr}, {pc}), the box is at ({br}, {bc}) and the target is at "
                f"({tr}, {tc}). The box is {abs(br - tr)} rows and {abs(bc - tc)} columns away "
                f"from the target, so I should move {move} to get behind it."
            )
            yield json.dumps({"thoughts": thoughts, "action": move})
    yield "Legal actions: " + ", ".join(f'"{d}"' for d in DIRECTIONS) + "."


def _points24_texts() -> Iterator[str]:
    yield "Legal actions: " + ", ".join(f"'{a}'" for a in POINTS24_ACTIONS) + "."
    formulas = ("(10-4)*(3+1)", "8*3*(2-1)", "10+10+4", "6/(1-3/4)", "(7-1)*4", "3*8", "12+12")
    for i in range(169):
        cards = [CARD_NAMES[(i * k + k * k) % 13] for k in (1, 3, 5, 7)]
        values = [min(10, CARD_NAMES.index(c) + 1) for c in cards]
        formula = formulas[i % len(formulas)]
        step = (i * 3) % (len(formula) + 1)
        partial = formula[:step]
        action = formula[step] if step < len(formula) else "="
        thoughts = (
            f"The cards are {', '.join(cards)}, which count as {', '.join(map(str, values))}. "
            f"The formula so far is '{partial}'. The next token is '{action}'."
        )
        reply = {"cards": values, "formula": partial, "thoughts": thoughts, "action": action}
        yield json.dumps(reply)
        a, b, c, d = values
        yield f"{a} + {b} = {a + b}, {c} * {d} = {c * d}"
    for a in range(1, 11):
        for b in range(1, 11):
            op = "*" if a + b == 12 or a * b == 12 else "+"
            result = a * b if op == "*" else a + b
            thoughts = f"{a} {op} {b} gives {result}."
            yield json.dumps(
                {"cards": [a, b], "formula": f"{a}{op}", "thoughts": thoughts, "action": str(b)}
            )


def _numberline_texts() -> Iterator[str]:
    for current in range(6):
        for target in range(6):
            if current == target:
                continue
            action = "+" if target > current else "-"
            side = "right" if action == "+" else "left"
            thoughts = (
                f"The current number is {current} and the target is {target}, so I move one "
                f"step to the {side}."
            )
            reply = {"current number": current, "target number": target}
            yield json.dumps(reply | {"thoughts": thoughts, "action": action})


def _blackjack_texts() -> Iterator[str]:
    for player in range(4, 22):
        for dealer in range(1, 11):
            action = "hit" if player < 17 and (player < 12 or dealer > 6) else "stand"
            thoughts = (
                f"My total is {player} and the dealer shows {dealer}. "
                f"I will {action} because {21 - player} points remain before 21."
            )
            yield json.dumps({"thoughts": thoughts, "action": action})


SUBJECTS = ("The player", "The box", "The target", "The wall", "The dealer", "My total",
            "The formula", "The current number", "The first card", "The last card",
            "Each move", "This action", "The next step", "Every box", "The result")  # fmt: skip
VERBS = ("is", "was", "stays", "becomes", "needs", "blocks", "reaches", "follows", "moves",
         "remains", "equals", "leaves", "covers", "touches", "uses")  # fmt: skip
PLACES = ("above the target", "below the wall", "next to the box", "in the corner",
          "on the left side", "on the right side", "in the same row", "in the same column",
          "one cell away", "two cells away", "close to the goal", "far from the player",
          "behind the box", "between two walls", "at the edge of the map")  # fmt: skip
REASONS = ("because the path is clear", "so that the box can be pushed later",
           "which would make the puzzle unsolvable", "since the numbers must all be used",
           "to avoid a dead end", "and nothing else is possible", "therefore I should wait",
           "but the previous step was wrong", "after checking every option",
           "while keeping the total under twenty-one", "until the formula evaluates correctly",
           "unless the dealer has a strong card", "given the position of the walls",
           "without breaking the rules", "according to the game description")  # fmt: skip


GLOSSARY = ("Ace", "Jack", "Queen", "King", "hearts", "spades", "diamonds", "clubs", "deck",
            "suit", "rank", "hand", "score", "points", "win", "lose", "draw", "bust", "sum",
            "product", "difference", "quotient", "multiply", "divide", "subtract", "add",
            "parenthesis", "bracket", "operator", "expression", "equation", "answer", "wrong",
            "correct", "invalid", "valid", "legal", "illegal", "observation", "image", "picture",
            "grid", "cell", "row", "column", "position", "coordinate", "direction", "north",
            "south", "east", "west", "upward", "downward", "goal", "plan", "strategy", "solution",
            "episode", "reward", "penalty", "success", "failure", "remaining", "already",
            "again", "instead", "maybe", "probably", "certainly", "however", "otherwise",
            "possible", "impossible", "careful", "simple", "better", "worse", "best", "agent",
            "assistant", "system", "user", "question", "reply", "format", "output", "input")  # fmt: skip


def _reasoning_texts() -> Iterator[str]:
    """Short thoughts built from fixed phrase lists: the prose vocabulary of replies."""
    n = len(SUBJECTS)
    for i in range(n * n):
        s, v, p, r = (
            SUBJECTS[i % n],
            VERBS[(i // n) % n],
            PLACES[(i * 7) % n],
            REASONS[(i * 11) % n],
        )
        yield f"{s} {v} {p}, {r}. Let me think step by step: first {v.rstrip('s')}, then {p}."
    m = len(GLOSSARY)
    for i in range(2 * m):
        yield f"The {GLOSSARY[i % m]} and the {GLOSSARY[(i * 5 + 1) % m]} matter here."


def _numbers_texts() -> Iterator[str]:
    yield " ".join(str(n) for n in range(0, 257))
    yield " ".join(f"({r}, {c})" for r in range(10) for c in range(10))
    yield " ".join(f"{n / 4:.2f}" for n in range(0, 101))
    yield "Turn 1. Turn 2. Step 10 of 40. Reward: -0.1, +1, -1, +10. Success rate: 53.5%."


def corpus() -> Iterator[str]:
    """The training corpus, one document at a time, in a fixed order."""
    for _ in range(3):  # the rules recur in every prompt: weight them up
        yield from RULES
    yield from _sokoban_texts()
    yield from _points24_texts()
    yield from _numberline_texts()
    yield from _blackjack_texts()
    yield from _reasoning_texts()
    yield from _numbers_texts()


# ---------------------------------------------------------------------------------------------
# The files.
# ---------------------------------------------------------------------------------------------


def _byte_level() -> dict:
    return {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def train_tokenizer() -> Tokenizer:
    """A byte-level BPE with Qwen2's pipeline, trained on `corpus()`; exactly `VOCAB_SIZE` tokens."""
    tokenizer = Tokenizer(
        models.BPE(
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )  # fmt: skip
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(**_byte_level()),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel(**_byte_level())
    tokenizer.post_processor = processors.ByteLevel(**_byte_level())
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(
            f"the corpus yields {tokenizer.get_vocab_size()} tokens, expected {VOCAB_SIZE}: "
            "add text to corpus()"
        )
    return tokenizer


def _added_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}  # fmt: skip


def tokenizer_config() -> dict:
    """tokenizer_config.json in the layout of Qwen2.5-VL's (slow-tokenizer keys included)."""
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): _added_token(t) for i, t in enumerate(SPECIAL_TOKENS)},
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": PAD_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _json_text(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def build(out_dir: str | Path) -> list[Path]:
    """Write the tokenizer/processor files into `out_dir` (created if needed); their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Round-trip through json so the layout is ours (indent 2), not the library's compact string.
    tokenizer_json = json.loads(train_tokenizer().to_str())
    files = {
        "tokenizer.json": _json_text(tokenizer_json),
        "tokenizer_config.json": _json_text(tokenizer_config()),
        "chat_template.jinja": QWEN2_5_VL_CHAT_TEMPLATE,
        "preprocessor_config.json": _json_text(PREPROCESSOR_CONFIG),
    }
    paths = []
    for name, text in files.items():
        path = out / name
        path.write_bytes(text.encode("utf-8"))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write the files into")
    args = parser.parse_args(argv)
    for path in build(args.out):
        print(path)


if __name__ == "__main__":
    main()
