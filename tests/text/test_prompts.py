"""Jitted prompt assembly equals `encode_chat` of the same text, for random states of every env."""

import jax
import numpy as np
import pytest

from gtr_turbo_jax import envs
from gtr_turbo_jax.text import prompts
from gtr_turbo_jax.text.image import num_image_tokens
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path

STATES = 12


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_tokenizer_path())


def random_fields(env, params, count, seed=0):
    """`prompt_fields` of `count` states reached by random play (stacked on a leading axis)."""
    rng = np.random.default_rng(seed)
    fields = []
    key = jax.random.key(seed)
    for _ in range(count):
        key, reset_key = jax.random.split(key)
        _, state = env.reset(reset_key, params)
        for _step in range(int(rng.integers(0, 8))):
            key, step_key = jax.random.split(key)
            action = int(rng.integers(env.num_actions))
            _, state, *_ = env.step(step_key, state, action, params)
        fields.append(jax.device_get(env.prompt_fields(state, params)))
    return jax.tree.map(lambda *x: np.stack(x), *fields)


@pytest.mark.parametrize("style", prompts.STYLES)
@pytest.mark.parametrize("env_name", list(envs.ENVS))
def test_assembled_prompt_equals_encode_chat(tokenizer, env_name, style):
    env, params = envs.make(env_name)
    height, width, _ = env.image_shape
    image_tokens = num_image_tokens(height, width)
    template = prompts.make_template(env_name, env, tokenizer, image_tokens, style=style)
    batch = random_fields(env, params, STATES)
    ids, mask = jax.jit(jax.vmap(lambda f: prompts.assemble(template, f)))(batch)
    ids, mask = np.asarray(ids), np.asarray(mask)
    assert ids.shape == mask.shape == (STATES, template.max_length)
    lengths = set()
    for row in range(STATES):
        fields = jax.tree.map(lambda x, r=row: x[r], batch)
        expected = prompts.encode_prompt(tokenizer, template, env, fields, image_tokens)
        lengths.add(len(expected))
        # left padding: the prompt is the last len(expected) slots, pad ids before it
        assert mask[row].sum() == len(expected) and mask[row, -len(expected) :].all()
        np.testing.assert_array_equal(ids[row, -len(expected) :], expected)
        assert (ids[row][~mask[row]] == template.pad_id).all()
        text = tokenizer.decode(expected.tolist())
        for name in env.action_names:
            named = ("numberline", "blackjack") + (("sokoban",) if style == "brief" else ())
            if style == "full" or env_name in named:
                assert name.isdigit() or name in text  # the prompt names every non-number action
    if env_name in ("points24", "ezpoints"):
        assert len(lengths) > 1  # random play changed the formula


def test_every_symbol_tokenizes_alone_as_in_context(tokenizer):
    """Pieces glued in any order tokenize as the concatenation of their own tokens."""
    env, _ = envs.make("sokoban")
    template = prompts.make_template("sokoban", env, tokenizer, 4)
    slot = next(p for p in template.pieces if isinstance(p, prompts.Slot))
    table, lengths = template.tables["grid"]
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows = rng.integers(0, len(slot.renderings), 12)
        text = "".join(slot.renderings[r] for r in rows) + " Your"
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        glued = [t for r in rows for t in table[r, : lengths[r]]]
        assert expected[: len(glued)] == glued, text


def test_unknown_env_is_one_clear_error(tokenizer):
    env, _ = envs.make("numberline")
    with pytest.raises(ValueError, match="unknown env 'chess'"):
        prompts.make_template("chess", env, tokenizer, 4)


def host_fields(env_name, env, params, count, rng):
    """Stacked fields of `count` states drawn on the host (levels of the bank, random formulas)."""
    if env_name == "sokoban":
        index = rng.integers(0, params.levels.grids.shape[0], count)
        return {
            "grid": np.asarray(params.levels.grids)[index],
            "player": np.asarray(params.levels.players)[index],
        }
    lengths = rng.integers(0, env.formula_capacity + 1, count)
    formula = rng.integers(0, len(env.formula_symbols), (count, env.formula_capacity))
    formula = np.where(np.arange(env.formula_capacity) < lengths[:, None], formula, -1)
    ranks = rng.integers(1, 14, (count, env.num_cards))
    return {
        "ranks": ranks,
        "values": np.minimum(ranks, 10),
        "formula": formula.astype(np.int32),
        "formula_length": lengths.astype(np.int32),
    }


@pytest.mark.parametrize("env_name", ["sokoban", "points24"])
def test_action_history_slot_equals_encode_chat(tokenizer, env_name):
    env, params = envs.make(env_name)
    history_length = 3
    template = prompts.make_template(env_name, env, tokenizer, 4, history_length=history_length)
    plain = prompts.make_template(env_name, env, tokenizer, 4)
    rng = np.random.default_rng(1)
    batch = host_fields(env_name, env, params, 6, rng)  # no env compile: only the slots matter
    histories = rng.integers(-1, env.num_actions, (6, history_length)).astype(np.int32)
    histories[0] = -1  # the first turn: no action yet
    batch = dict(batch, history=histories)
    ids, mask = jax.jit(jax.vmap(lambda f: prompts.assemble(template, f)))(batch)
    for row in range(6):
        fields = jax.tree.map(lambda x, r=row: x[r], batch)
        expected = prompts.encode_prompt(tokenizer, template, env, fields, 4)
        np.testing.assert_array_equal(np.asarray(ids[row])[np.asarray(mask[row])], expected)
        text = prompts.prompt_text(template, env, fields)
        listed = "".join(" " + env.action_names[a] for a in histories[row] if a >= 0)
        assert "oldest first:" + listed + " (end of actions)." in text
        # without history the prompt is the same text less the history sentence
        assert prompts.prompt_text(plain, env, fields) == text.replace(
            prompts.HISTORY_TEXT.format(history=listed), ""
        )
    with pytest.raises(ValueError, match="fields need 'history'"):
        prompts.assemble(template, host_fields(env_name, env, params, 1, rng))
    with pytest.raises(ValueError, match="history_length=-1"):
        prompts.make_template(env_name, env, tokenizer, 4, history_length=-1)


def test_brief_and_compact_styles_are_shorter_and_unknown_style_is_one_line(tokenizer):
    env, _ = envs.make("sokoban")
    full = prompts.make_template("sokoban", env, tokenizer, 9)
    brief = prompts.make_template("sokoban", env, tokenizer, 9, style="brief")
    compact = prompts.make_template("sokoban", env, tokenizer, 9, style="compact")
    assert brief.max_length < 0.5 * full.max_length
    assert compact.max_length < 0.5 * brief.max_length  # the state without rules or format
    with pytest.raises(ValueError, match="style='short'.*full, brief, compact"):
        prompts.make_template("sokoban", env, tokenizer, 9, style="short")


@pytest.mark.parametrize("style", prompts.STYLES)
@pytest.mark.parametrize("size, num_boxes", [((6, 6), 1), ((8, 8), 2)])
def test_positions_list_the_cells_of_the_grid(tokenizer, style, size, num_boxes):
    """`positions=True`: the assembled prompt equals `encode_chat` of its text, and the cells it
    lists are those a row-major scan of the grid finds (checked on the host, independently)."""
    env, params = envs.make("sokoban", size=size, num_boxes=num_boxes)
    template = prompts.make_template("sokoban", env, tokenizer, 4, style=style, positions=True)
    batch = random_fields(env, params, STATES, seed=3)
    ids, mask = jax.jit(jax.vmap(lambda f: prompts.assemble(template, f)))(batch)
    ids, mask = np.asarray(ids), np.asarray(mask)
    box_cells, target_cells = (3, 4), (2, 3, 6)  # box on target, box; target, box on, player on
    for row in range(STATES):
        fields = jax.tree.map(lambda x, r=row: x[r], batch)
        expected = prompts.encode_prompt(tokenizer, template, env, fields, 4)
        np.testing.assert_array_equal(ids[row][mask[row]], expected)
        grid, (pr, pc) = fields["grid"], fields["player"]
        listed = [f" player ({pr}, {pc})"]
        for kind, codes in (("box", box_cells), ("target", target_cells)):
            cells = [(r, c) for r in range(size[0]) for c in range(size[1]) if grid[r, c] in codes]
            assert len(cells) == num_boxes
            listed += [f" {kind} ({r}, {c})" for r, c in cells]
        wording = envs.agent_spec("sokoban").positions.texts[style]
        cells_text = wording.format(
            player=listed[0],
            box="".join(listed[1 : 1 + num_boxes]),
            target="".join(listed[1 + num_boxes :]),
        )
        assert cells_text in prompts.prompt_text(template, env, fields)


def test_positions_are_for_envs_with_a_positions_hint_only(tokenizer):
    env, _ = envs.make("numberline")
    with pytest.raises(ValueError, match="positions=True adds the env's positions hint; 'numb"):
        prompts.make_template("numberline", env, tokenizer, 4, positions=True)


@pytest.mark.parametrize("num_boxes", [1, 2])
def test_grid_slot_bound_is_the_longest_grid_exactly(tokenizer, num_boxes):
    """The grid slot's `max_tokens` against brute force: every placement of the player, boxes and
    targets on a 3x4 room (walls or floor elsewhere), its token count summed cell by cell; the
    bound is never exceeded and is reached."""
    import itertools
    from types import SimpleNamespace

    from gtr_turbo_jax.envs.sokoban import levels as lv
    from gtr_turbo_jax.envs.sokoban.agent import grid_slot

    rows, cols = 3, 4
    slot = grid_slot(SimpleNamespace(size=(rows, cols), num_boxes=num_boxes))
    lengths = np.asarray([len(prompts._encode(tokenizer, r)) for r in slot.renderings])
    n = len(lv.GRID_SYMBOLS)
    bound = slot.max_tokens(lengths)
    cells = rows * cols
    longest = 0
    for background in (lv.WALL, lv.FLOOR):
        for player, *rest in itertools.permutations(range(cells), 1 + num_boxes):
            for targets in itertools.combinations(range(cells), num_boxes):
                grid = np.full(cells, background)
                grid[list(targets)] = lv.TARGET
                grid[rest] = np.where(grid[rest] == lv.TARGET, lv.BOX_ON_TARGET, lv.BOX)
                grid[player] = lv.PLAYER_ON_TARGET if grid[player] == lv.TARGET else lv.PLAYER
                last = np.arange(cells) % cols == cols - 1
                longest = max(longest, int(lengths[grid + np.where(last, n, 0)].sum()))
    assert longest == bound
    assert bound < cells * lengths.max()  # tighter than every cell at its longest rendering


@pytest.mark.parametrize("size, num_boxes", [((6, 6), 1), ((8, 8), 2), ((10, 10), 4)])
def test_every_bank_level_fits_the_prompt(tokenizer, size, num_boxes):
    env, _ = envs.make("sokoban", size=size, num_boxes=num_boxes, split="test")
    template = prompts.make_template("sokoban", env, tokenizer, 4, style="brief", positions=True)
    from gtr_turbo_jax.envs.sokoban import levels as lv

    bank = np.load(lv.shipped_bank_path(size, num_boxes, "test"))["levels"]
    longest = 0
    for grid in bank:
        player = np.argwhere(np.isin(grid, (lv.PLAYER, lv.PLAYER_ON_TARGET)))[0]
        fields = {"grid": grid, "player": player}
        longest = max(longest, len(prompts.encode_prompt(tokenizer, template, env, fields, 4)))
    assert longest <= template.max_length


@pytest.mark.parametrize("max_position", [3, 5, 9])
def test_numberline_states_its_own_range(tokenizer, max_position):
    env, params = envs.make("numberline", max_position=max_position)
    template = prompts.make_template("numberline", env, tokenizer, 4, style="full")
    _, state = env.reset(jax.random.key(0), params)
    text = prompts.prompt_text(template, env, jax.device_get(env.prompt_fields(state, params)))
    assert f"both between 0 and {max_position} (inclusive)." in text
