"""`gtr-turbo` end to end on the smoke setting: train -> checkpoint -> resume -> eval -> plot ->
export -> load the export with transformers and compare logits; and the bad-input lines.

One smoke run (module fixture) serves every test; the commands run in-process through `cli.main`
so JAX's compilation caches are shared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from gtr_turbo_jax import cli
from gtr_turbo_jax.train.logger import read_metrics

SMOKE = ["--smoke", "--config.train.tensorboard=False"]
LINE_KEYS = ("step", "env_steps", "success_rate", "return_mean", "kl_mean", "valid_rate",
             "thought_len", "wall_s")  # fmt: skip


def run_cli(*argv: str) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli") / "run"
    assert run_cli("train", "--env=sokoban", f"--workdir={workdir}", *SMOKE) == 0
    return workdir


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def policy_leaves(trainer_dir: Path, step: int | None = None) -> list[np.ndarray]:
    from gtr_turbo_jax.train.commands import restore_run

    _, state, _ = restore_run(trainer_dir, step)
    return [np.asarray(x) for x in jax.tree.leaves((state.policy, state.value_head, state.teacher))]


def test_train_writes_the_run_directory(smoke_run, capsys):
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["rl"]["mode"] == "turbo_kl" and config["model"]["size"] == "micro"
    lines = read_metrics(smoke_run)
    updates = config["train"]["updates"]
    assert [line["step"] for line in lines] == list(range(updates + 1))  # 0: the warm start eval
    assert "eval/success_rate" in lines[0] and "warm_start/loss_last" in lines[0]
    for line in lines[1:]:
        assert set(LINE_KEYS) <= set(line), set(LINE_KEYS) - set(line)
        assert line["env_steps"] == line["step"] * 4 * 4  # num_envs * turns_per_update (smoke)
        assert 0.0 <= line["valid_rate"] <= 1.0
    assert "eval/success_rate" in lines[-1]
    assert checkpoint_steps(smoke_run)[-1] == updates
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["updates"] == updates and "eval/success_rate" in summary["final"]
    # Each evaluation's per-level outcomes, for paired comparisons (experiments/lab.py).
    levels = [json.loads(x) for x in (smoke_run / "eval_episodes.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "eval/success_rate" in line]
    assert [level["step"] for level in levels] == [line["step"] for line in evals]
    for level, line in zip(levels, evals):
        assert len(level["success"]) == len(level["return"]) == config["train"]["eval_episodes"]
        assert np.mean(level["success"]) == pytest.approx(line["eval/success_rate"])
        assert np.mean(level["return"]) == pytest.approx(line["eval/return_mean"], abs=1e-5)


def test_train_keeps_the_warm_start_as_sft_would_write_it(smoke_run, tmp_path):
    """RUN_DIR/sft_model is the warm-started model: bitwise the files `gtr-turbo sft` writes with
    the same config."""
    assert run_cli("sft", "--env=sokoban", f"--workdir={tmp_path / 'sft'}", *SMOKE) == 0
    kept, alone = smoke_run / "sft_model", tmp_path / "sft" / "sft_model"
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in alone.iterdir())
    weights = sorted(kept.glob("*.safetensors"))
    assert weights and all(
        (kept / w.name).read_bytes() == (alone / w.name).read_bytes() for w in weights
    )
    assert not (smoke_run / ".sft_model.partial").exists()


def test_resume_after_losing_the_last_checkpoint_is_bitwise(smoke_run, tmp_path):
    """Resuming from the previous checkpoint redoes the lost update exactly."""
    copy = tmp_path / "run"
    shutil.copytree(smoke_run, copy)
    steps = checkpoint_steps(copy)
    shutil.rmtree(copy / "checkpoints" / str(steps[-1]))
    assert run_cli("train", f"--workdir={copy}", "--resume") == 0
    assert checkpoint_steps(copy)[-1] == steps[-1]
    for a, b in zip(policy_leaves(smoke_run), policy_leaves(copy), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [line["step"] for line in read_metrics(copy)] == list(range(steps[-1] + 1))


def test_eval_plot_and_export(smoke_run, tmp_path, capsys):
    capsys.readouterr()
    assert run_cli("eval", smoke_run, "--episodes=3", "--gifs=1") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["eval/success_rate"] <= 1.0
    gifs = sorted((smoke_run / "episodes").glob("*.gif"))
    assert gifs and Image.open(gifs[-1]).n_frames >= 1
    # The run evaluates greedily (above); --temperature samples (the same levels: other replies).
    assert run_cli("eval", smoke_run, "--episodes=3", "--temperature=1.5") == 0
    sampled = json.loads(capsys.readouterr().out)
    assert sampled["eval/thought_len"] != metrics["eval/thought_len"]

    assert run_cli("plot", smoke_run, f"--out={tmp_path / 'plots'}") == 0
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert pngs and all(Image.open(p).format == "PNG" for p in pngs)

    out = tmp_path / "export"
    assert run_cli("export", smoke_run, out) == 0
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "value_head" / "value_head.safetensors").is_file()
    assert run_cli("export", smoke_run, out) == 2  # never overwrites


@pytest.mark.parity
def test_export_loads_in_transformers_with_the_same_logits(smoke_run, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5_VLForConditionalGeneration

    from gtr_turbo_jax.models import from_pretrained

    out = tmp_path / "export"
    assert run_cli("export", smoke_run, out) == 0
    ours = from_pretrained(out)
    theirs = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    ids = np.random.default_rng(0).integers(8, 1000, (2, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    expected = theirs(input_ids=torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(mask)).logits.detach().numpy()  # fmt: skip
    got = np.asarray(ours.forward(ids, mask).logits)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    # and it is the trained policy, not the fresh model: a checkpoint differs from step 0
    from gtr_turbo_jax.train.commands import restore_run

    learner, state, _ = restore_run(smoke_run)
    trained = np.asarray(learner.model_with(state).forward(ids, mask).logits)
    np.testing.assert_allclose(got, trained, atol=1e-5)


# -- bad input: one line, exit 2 --------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--env=chess"], "config file .*chess.py.* not found"),
        (["train", "--config.rl.kl_coef=1"], "unknown config key 'rl.kl_coef'"),
        (["train", "--config.train.num_envs=lots"], "'train.num_envs' expects an int"),
        (["train", "--config.rl.merge_density=0"], r"rl.merge_density=0(.0)? is out of range"),
        (["train", "--config=configs/points24.py:qwen2.5-vl-3b"], "needs a local Hugging Face"),
        (["train", "--config.model.path=/nonexistent/model"], "is not a directory"),
        (["train", "--resume"], "--resume needs --workdir"),
        (["eval", "/nonexistent/run"], "config.json not found"),
        (["plot", "/nonexistent/run"], "metrics"),
        (["train", "--config.prompt.style=long"], "'prompt.style'='long': valid: full, brief"),
        (["train", "--config.warm_start.noise=2.0"], "'warm_start.noise'=2.0: need a value in"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert_one_line(run_cli(*argv), message, capsys)


def assert_one_line(code: int, message: str, capsys) -> None:
    import re

    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gtr-turbo: error: "), err
    assert re.search(message, err[0]), err[0]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--episodes=0", "--episodes=0: need a value >= 1"),
        ("--temperature=-1", r"--temperature=-1.0: need a value >= 0"),
        ("--temperature=nan", r"--temperature=nan: need a value >= 0"),
    ],
)
def test_bad_eval_flags_are_one_clear_line(smoke_run, flag, message, capsys):
    capsys.readouterr()
    assert_one_line(run_cli("eval", smoke_run, flag), message, capsys)


def test_corrupt_newest_checkpoint_falls_back(smoke_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(smoke_run, copy)
    steps = checkpoint_steps(copy)
    newest = copy / "checkpoints" / str(steps[-1])
    for file in sorted(p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 64):
        file.write_bytes(file.read_bytes()[:16])  # truncate every array file
    with pytest.warns(Warning):
        leaves = policy_leaves(copy)
    previous = policy_leaves(smoke_run, steps[-2])
    for a, b in zip(leaves, previous, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_run_directory_with_checkpoints_is_not_overwritten(smoke_run, capsys):
    before = checkpoint_steps(smoke_run)
    assert run_cli("train", f"--workdir={smoke_run}", *SMOKE) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert checkpoint_steps(smoke_run) == before


def test_every_benchmark_script_is_a_bench_command():
    bench = Path(cli.__file__).resolve().parents[1] / "experiments" / "bench"
    scripts = {p.stem for p in bench.glob("*.py") if not p.name.startswith("_")}
    assert set(cli.BENCHES) == scripts
