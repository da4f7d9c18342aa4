"""The Colab notebooks of experiments/notebooks/.

Fast: outputs are stripped in the repository; each notebook opens with a Colab badge that links its
own file and says what it does and how long it takes; the parameter cells read the CI switches; the
kernel `python3` runs this interpreter.
Slow: each notebook executes top to bottom with nbclient on CPU, `GTR_TURBO_NOTEBOOK_SMALL=1`
(smoke sizes) and `GTR_TURBO_SKIP_DOWNLOAD=1` (a tiny local model instead of the hub), in a scratch
directory, and shows what it promises (the summary table, curves as PNG, an episode GIF, the memory
estimate); and the helper's memory estimate equals the bytes of a real training state.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "experiments" / "notebooks"
NOTEBOOKS = ("quickstart", "compare_modes", "qwen2_5_vl_points24")
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
REPO_URL = "github/gtr-turbo-jax/gtr_turbo_jax/blob/main/experiments/notebooks"
SMALL_LINE = 'SMALL = os.environ.get("GTR_TURBO_NOTEBOOK_SMALL") == "1"'
SKIP_DOWNLOAD_LINE = 'SKIP_DOWNLOAD = os.environ.get("GTR_TURBO_SKIP_DOWNLOAD") == "1"'


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def code_sources(notebook: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def test_the_folder_holds_exactly_these_notebooks():
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_outputs_are_stripped(name):
    notebook = read(name)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert "widgets" not in notebook.metadata  # no saved widget state either


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_opens_with_a_badge_and_says_what_and_how_long(name):
    first = read(name).cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith(f"[![Open In Colab]({BADGE})]")
    assert f"{REPO_URL}/{name}.ipynb)" in first.source.splitlines()[0]
    assert "**How long:**" in first.source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameter_cells_read_the_ci_switches(name):
    sources = "\n".join(code_sources(read(name)))
    assert SMALL_LINE in sources
    if name == "qwen2_5_vl_points24":
        assert SKIP_DOWNLOAD_LINE in sources and "snapshot_download(" in sources


def test_the_python3_kernel_is_this_interpreter():
    from jupyter_client import KernelManager

    command = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert Path(command[0]).resolve() == Path(sys.executable).resolve()


# -- slow: execute ----------------------------------------------------------------------------


@dataclasses.dataclass
class Shown:
    """What an executed notebook printed and displayed."""

    text: str  # stdout and stderr of every cell, in order
    mime_types: list[str]  # of every display / result output, in order


def shown(notebook: nbformat.NotebookNode) -> Shown:
    text, mime_types = [], []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                text.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                mime_types += list(output.data)
                text.append(output.data.get("text/plain", ""))
    return Shown("".join(text), mime_types)


@pytest.fixture
def notebook_env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("GTR_TURBO_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("GTR_TURBO_SKIP_DOWNLOAD", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The notebooks train the same tiny shapes: compile them once (shared with test_docs).
    cache = tmp_path_factory.getbasetemp() / "jax-cache"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def execute(name: str, workdir: Path) -> tuple[nbformat.NotebookNode, Shown]:
    from nbclient import NotebookClient

    notebook = read(name)
    client = NotebookClient(
        notebook, timeout=1800, kernel_name="python3", resources={"metadata": {"path": workdir}}
    )
    client.execute()  # a failing cell raises CellExecutionError with its traceback
    return notebook, shown(notebook)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, notebook_env, tmp_path):
    before = (NOTEBOOK_DIR / f"{name}.ipynb").read_bytes()
    _, out = execute(name, tmp_path)
    assert (NOTEBOOK_DIR / f"{name}.ipynb").read_bytes() == before  # the repository file is kept
    assert f"repository: {REPO}" in out.text  # found the checkout: nothing was cloned
    assert "backend cpu" in out.text
    assert "image/png" in out.mime_types  # curves inline
    runs = tmp_path / "runs"
    if name == "quickstart":
        assert "sokoban / turbo_kl: 3 updates" in out.text and "held-out" in out.text
        assert "Mesh('data': 1, 'fsdp': 1" in out.text
        assert "eval/success_rate" in out.text
        assert "image/gif" in out.mime_types
        (run,) = runs.iterdir()
        assert (run / "plots" / "success_rate.png").is_file()
    elif name == "compare_modes":
        (session,) = runs.iterdir()
        modes = ("ppo", "gtr", "turbo_sft", "turbo_kl")
        for mode in modes:
            assert f"sokoban / {mode}: 3 updates" in out.text
            assert (session / mode / "summary.json").is_file()
        table = out.text[out.text.index("mode        warm start") :]
        assert all(f"\n{mode} " in table for mode in modes)
        assert out.mime_types.count("image/png") >= 3  # success, thought length, overview
    else:
        assert "total (activations not counted)" in out.text  # the memory estimate
        assert "points24 / turbo_kl: 3 updates" in out.text
        assert "image/gif" in out.mime_types
        run = runs / "qwen2_5_vl_3b-points24-turbo_kl"
        assert (run / "hf_policy" / "config.json").is_file()
        assert (run / "hf_policy" / "tokenizer.json").is_file()
        assert (tmp_path / "models" / "random-micro" / "model.safetensors").is_file()


@pytest.mark.slow
def test_memory_estimate_is_the_bytes_of_a_real_state(tmp_path):
    """The helper's shape-only estimate against `init_train_state` on real arrays (a LoRA
    Points24 run in turbo_kl, so every part but the DAgger buffer exists)."""
    import jax
    import numpy as np

    sys.path.insert(0, str(NOTEBOOK_DIR))
    try:
        import notebook_helpers
    finally:
        sys.path.remove(str(NOTEBOOK_DIR))
    from gtr_turbo_jax.train.learner import Learner
    from gtr_turbo_jax.train.run_config import load_config, smoke
    from gtr_turbo_jax.train.setup import build_model
    from gtr_turbo_jax.train.state import init_train_state

    config = smoke(load_config("points24"))
    config.model.lora_rank = 4
    learner = Learner(config)
    estimate = notebook_helpers.memory_estimate(learner)
    model, value_head = build_model(learner.setup)
    _, state = init_train_state(
        model, value_head, learner.setup.update, jax.random.key(0), learner.batch_like()
    )

    def nbytes(tree) -> int:
        leaves = jax.tree.leaves(tree)
        as_data = lambda x: (
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        )
        return sum(np.asarray(as_data(x)).nbytes for x in leaves)

    real = {
        field.name: nbytes(getattr(state, field.name))
        for field in dataclasses.fields(state)
        if not isinstance(getattr(state, field.name), float)
    }
    assert estimate.state == real
    assert real["teacher"] > 0 and real["snapshots"] > 0 and real["dagger"] <= 8
    # The KV cache: keys and values per layer, [envs, kv heads, head dim, prompt + reply], float32.
    model_text = learner.setup.model_config.text
    length = learner.setup.template.max_length + learner.setup.sampling.max_new_tokens
    assert estimate.kv_cache == (
        2 * model_text.num_hidden_layers * config.train.num_envs
        * model_text.num_key_value_heads * model_text.head_dim * length * 4
    )  # fmt: skip
