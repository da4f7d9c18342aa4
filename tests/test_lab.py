"""experiments/lab.py: its statistics on hand-made run directories against numpy, its resume
logic with a fake launcher, its command line and one-line errors; end to end at smoke size (slow).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def lab(load_experiment):
    return load_experiment("lab")


# -- hand-made runs ---------------------------------------------------------------------------


def write_run(
    directory: Path, warm: float, trained: float, *, entropy=(1.0, 2.0), kl=(0.1, 0.3),
    final=None, eval_episodes=200, outcomes=None,
) -> Path:  # fmt: skip
    """A finished run directory as `gtr-turbo train` leaves it (the files the lab reads)."""
    directory.mkdir(parents=True)
    final = {"eval/success_rate": trained, "eval/return_mean": 2 * trained, **(final or {})}
    summary = {"env": "sokoban", "mode": directory.parent.name, "updates": len(entropy),
               "env_steps": 64, "wall_s": 1.0, "initial": {"eval/success_rate": warm},
               "final": final}  # fmt: skip
    (directory / "summary.json").write_text(json.dumps(summary))
    (directory / "config.json").write_text(json.dumps({"train": {"eval_episodes": eval_episodes}}))
    lines = [{"step": 0, "env_steps": 0, "eval/success_rate": warm}]
    for step, (h, k) in enumerate(zip(entropy, kl), start=1):
        lines.append({"step": step, "thought_entropy": h, "kl_mean": k})
    lines[-1].update(final)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if outcomes is not None:
        evals = [{"step": 0, "success": list(outcomes[0])},
                 {"step": len(entropy), "success": list(outcomes[1])}]  # fmt: skip
        (directory / "eval_episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    return directory


def fake_model(directory: Path) -> Path:
    """What `_is_model_dir` recognises as `gtr-turbo sft`'s sft_model/ (weights not read)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"")
    return directory


def np_mean_se(values):
    values = np.asarray([v for v in values if not np.isnan(v)], float)
    return values.mean(), values.std(ddof=1) / np.sqrt(len(values))


# -- statistics -------------------------------------------------------------------------------


def test_mean_and_standard_error_match_numpy(lab):
    values = [0.2, 0.35, 0.1, math.nan, 0.4]
    mean, se, n = lab.mean_se(values)
    expected = np_mean_se(values)
    assert n == 4
    assert (mean, se) == pytest.approx(expected)
    one = lab.mean_se([0.3])
    assert one[0] == 0.3 and math.isnan(one[1]) and one[2] == 1  # one seed: no spread known
    assert lab.mean_se([math.nan])[2] == 0


def test_paired_bootstrap_matches_a_numpy_transcription(lab):
    data = np.random.default_rng(1)
    warm = (data.random(200) < 0.2).astype(float)
    trained = np.where(data.random(200) < 0.3, 1.0, warm)
    low, high = lab.paired_bootstrap(warm, trained, np.random.default_rng(7), resamples=5000)
    diff = trained - warm
    index = np.random.default_rng(7).integers(0, 200, size=(5000, 200))  # resampled levels
    expected = np.percentile(diff[index].mean(axis=1), [2.5, 97.5])
    assert (low, high) == pytest.approx(tuple(expected))
    assert low < diff.mean() < high
    # Every level changed the same way: nothing to resample, the interval is a point.
    assert lab.paired_bootstrap(np.zeros(50), np.ones(50), np.random.default_rng(0)) == (1, 1)


def test_normal_interval_is_the_unpaired_binomial_approximation(lab):
    low, high = lab.normal_interval(0.2, 0.35, 200)
    half = 1.959964 * np.sqrt((0.2 * 0.8 + 0.35 * 0.65) / 200)
    assert (low, high) == pytest.approx((0.15 - half, 0.15 + half), abs=1e-6)
    assert all(math.isnan(x) for x in lab.normal_interval(0.2, 0.3, None))


def test_summary_of_hand_made_runs_matches_numpy(lab, tmp_path):
    warm, trained = [0.2, 0.25, 0.1], [0.3, 0.2, 0.4]
    entropies = [(1.0, 2.0, 3.0), (0.5, 0.5, math.nan), (2.0, 1.0, 0.0)]
    for seed in range(3):
        write_run(tmp_path / "default" / "turbo_kl" / f"seed{seed}", warm[seed], trained[seed],
                  entropy=entropies[seed], kl=(0.1 * seed, 0.2, 0.3),
                  final={"eval/no_effect_rate": 0.1 * seed, "eval/self_bleu": 0.5,
                         "eval/valid_rate": 1.0 - 0.25 * seed,
                         "eval/grounding": math.nan if seed == 0 else 0.9})  # fmt: skip
    write_run(tmp_path / "default" / "ppo" / "seed0", 0.2, 0.1)
    key = lab.RunKey
    # Every dimension not given is what the directory holds; modes in MODES order.
    assert lab.report_keys(tmp_path, None, None, [0, 1]) == [
        key("default", "ppo", 0), key("default", "ppo", 1),
        key("default", "turbo_kl", 0), key("default", "turbo_kl", 1)]  # fmt: skip
    keys = [key("default", "ppo", 0), *(key("default", "turbo_kl", s) for s in range(3))]
    runs = [lab.load_run(k, k.directory(tmp_path)) for k in keys]
    assert None not in runs
    stats = lab.summary_stats(runs)
    kl = stats["default", "turbo_kl"]
    assert kl["warm-start success"][:2] == pytest.approx(np_mean_se(warm))
    assert kl["trained success"][:2] == pytest.approx(np_mean_se(trained))
    assert kl["gain"][:2] == pytest.approx(np_mean_se(np.subtract(trained, warm)))
    assert kl["return"][:2] == pytest.approx(np_mean_se(2 * np.array(trained)))
    run_entropy = [np.nanmean(e) for e in entropies]  # over each run's updates, null skipped
    assert kl["thought entropy"][:2] == pytest.approx(np_mean_se(run_entropy))
    assert kl["KL"][:2] == pytest.approx(np_mean_se([np.mean([0.1 * s, 0.2, 0.3]) for s in
                                                      range(3)]))  # fmt: skip
    assert kl["no-effect rate"][:2] == pytest.approx(np_mean_se([0.0, 0.1, 0.2]))
    assert kl["valid replies"][:2] == pytest.approx(np_mean_se([1.0, 0.75, 0.5]))
    assert kl["grounding"][0] == pytest.approx(0.9) and kl["grounding"][2] == 2  # NaN skipped
    ppo = stats["default", "ppo"]
    assert ppo["gain"][0] == pytest.approx(-0.1) and math.isnan(ppo["gain"][1])
    table = lab.summary_table(runs)
    assert "| default | turbo_kl | 3 | 0.183 ± 0.044 |" in table
    assert "| default | ppo | 1 | 0.200 ± n/a |" in table


def test_seed_intervals_say_how_they_were_made(lab, tmp_path):
    warm = np.array([0, 1, 0, 0, 1, 0, 0, 0] * 5, float)
    trained = np.array([1, 1, 0, 1, 1, 0, 0, 1] * 5, float)
    with_levels = write_run(tmp_path / "g" / "ppo" / "seed0", warm.mean(), trained.mean(),
                            outcomes=(warm, trained), eval_episodes=40)  # fmt: skip
    without = write_run(tmp_path / "g" / "ppo" / "seed1", 0.25, 0.5, eval_episodes=40)
    a = lab.load_run(lab.RunKey("g", "ppo", 0), with_levels)
    b = lab.load_run(lab.RunKey("g", "ppo", 1), without)
    assert b.outcomes is None and a.outcomes[1] == pytest.approx(trained)
    lo, hi, how = lab.gain_interval(a, np.random.default_rng(3), 2000)
    assert how == "bootstrap"
    assert (lo, hi) == lab.paired_bootstrap(warm, trained, np.random.default_rng(3), 2000)
    assert lab.gain_interval(b, np.random.default_rng(3)) == (
        *lab.normal_interval(0.25, 0.5, 40), "normal")  # fmt: skip
    table = lab.seed_table([a, b], np.random.default_rng(3), 2000)
    assert "| bootstrap | 40 |" in table and "| normal | 40 |" in table


def test_report_only_writes_markdown_png_and_prints_the_table(lab, tmp_path, capsys):
    for seed, (w, t) in enumerate([(0.2, 0.3), (0.1, 0.3)]):
        write_run(tmp_path / "default" / "turbo_kl" / f"seed{seed}", w, t)
        write_run(tmp_path / "default" / "ppo" / f"seed{seed}", w, w)
    (tmp_path / "default" / "ppo" / "seed2").mkdir()  # started, not finished
    assert lab.main(["--out", str(tmp_path), "--report-only"]) == 0
    printed = capsys.readouterr().out
    assert "| default | turbo_kl | 2 | 0.150 ± 0.050 | 0.300 ± 0.000 | 0.150 ± 0.050 |" in printed
    assert "not finished: default/ppo/seed2" in printed
    text = (tmp_path / "results.md").read_text()
    assert "--report-only" in text and "| normal | 200 |" in text and "at commit " in text
    assert "## Not finished" in text
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- running and resuming ---------------------------------------------------------------------


def workdir_of(argv) -> str:
    return next(a for a in argv if a.startswith("--workdir=")).split("=", 1)[1]


@pytest.fixture
def fake_launch(lab, monkeypatch):
    """Replaces the launcher: records each gtr-turbo argv and finishes the run (summary.json)."""
    calls = []

    def launch(argv):
        calls.append(list(argv))
        status = launch.status.pop(0) if launch.status else 0
        if status == 0:  # a finished run's files, written aside and moved into place
            workdir = Path(workdir_of(argv))
            write_run(workdir / "x", 0.2, 0.3)
            for path in (workdir / "x").iterdir():
                path.replace(workdir / path.name)
            (workdir / "x").rmdir()
        return status

    launch.status = []
    monkeypatch.setattr(lab, "launch", launch)
    return calls, launch


def test_skips_done_resumes_checkpointed_and_starts_the_rest(lab, tmp_path, fake_launch):
    calls, _ = fake_launch
    out = tmp_path / "lab"
    plan = lab.run_plan([lab.GridEntry("default")], ["turbo_kl"], [0, 1, 2])
    write_run(out / "default" / "turbo_kl" / "seed0", 0.1, 0.2)  # done
    (out / "default" / "turbo_kl" / "seed1" / "checkpoints" / "5").mkdir(parents=True)
    (out / "default" / "turbo_kl" / "seed2").mkdir(parents=True)  # no checkpoint yet: fresh
    (out / "default" / "turbo_kl" / "seed2" / "checkpoints").mkdir()  # empty: still fresh
    assert [lab.run_state(k.directory(out)) for k, _ in plan] == ["done", "resume", "fresh"]
    lines = []
    failed = lab.run_all(out, plan, lambda key, entry, d: ["train", f"--workdir={d}"], lines.append)
    assert failed == []
    run1, run2 = (out / "default" / "turbo_kl" / f"seed{s}" for s in (1, 2))
    assert calls == [["train", f"--workdir={run1}", "--resume"], ["train", f"--workdir={run2}"]]
    assert lines[0] == "[1/3] default/turbo_kl/seed0: done"
    calls.clear()
    assert lab.run_all(out, plan, lambda *a: ["unused"], lines.append) == [] and calls == []


def test_main_trains_the_grid_in_order_with_per_seed_warm_starts(lab, tmp_path, fake_launch):
    calls, _ = fake_launch
    for seed in (0, 1):
        fake_model(tmp_path / f"ws{seed}" / "sft_model")
    out = tmp_path / "lab"
    argv = ["--out", str(out), "--warm-start", str(tmp_path / "ws{seed}"), "--modes", "ppo,turbo_kl",
            "--seeds", "0,1", "--grid", "default", "--grid",
            "beta:--config.rl.kl_beta=0.5,--config.env.size=(6,6)", "--updates", "4",
            "--", "--config.train.tensorboard=False"]  # fmt: skip
    assert lab.main(argv) == 0
    order = [Path(workdir_of(c)).relative_to(out).as_posix() for c in calls]
    assert order == ["default/ppo/seed0", "default/turbo_kl/seed0", "beta/ppo/seed0",
                     "beta/turbo_kl/seed0", "default/ppo/seed1", "default/turbo_kl/seed1",
                     "beta/ppo/seed1", "beta/turbo_kl/seed1"]  # fmt: skip
    beta_kl_seed1 = calls[-1]
    assert beta_kl_seed1 == [
        "train", "--env=sokoban", "--mode=turbo_kl", "--seed=1",
        f"--workdir={out / 'beta' / 'turbo_kl' / 'seed1'}",
        f"--config.model.path={tmp_path / 'ws1' / 'sft_model'}", "--config.warm_start.steps=0",
        "--config.train.updates=4", "--config.train.tensorboard=False",
        "--config.rl.kl_beta=0.5", "--config.env.size=(6,6)",
    ]  # fmt: skip
    record = json.loads((out / "lab.json").read_text())
    assert record["grid"] == {"default": [], "beta": ["--config.rl.kl_beta=0.5",
                                                      "--config.env.size=(6,6)"]}  # fmt: skip
    assert (out / "results.md").is_file() and (out / "results.png").is_file()
    # Rerun: everything is done, nothing is launched; a new grid entry is added.
    calls.clear()
    assert lab.main(argv) == 0 and calls == []
    more = [*argv[: argv.index("--grid")], "--grid", "lr:--config.rl.learning_rate=2e-5",
            *argv[argv.index("--updates") :]]  # fmt: skip
    assert lab.main(more) == 0 and len(calls) == 4


def test_a_failed_run_does_not_stop_the_lab_but_ctrl_c_does(lab, tmp_path, fake_launch, capsys):
    calls, launch = fake_launch
    fake_model(tmp_path / "ws" / "sft_model")
    argv = ["--out", str(tmp_path / "lab"), "--warm-start", str(tmp_path / "ws"), "--modes", "ppo",
            "--seeds", "0,1,2"]  # fmt: skip
    launch.status = [2, 0, 0]
    assert lab.main(argv) == 1 and len(calls) == 3
    assert "failed runs: default/ppo/seed0" in capsys.readouterr().out
    calls.clear()
    launch.status = [130]
    argv[argv.index("0,1,2")] = "0,1,2,3,4"
    assert lab.main(argv) == 130 and len(calls) == 1  # seed0 again (its summary was written)
    assert "rerun the same command to continue" in capsys.readouterr().err


def test_launch_runs_gtr_turbo_in_a_child_and_returns_its_status(lab, capfd):
    assert lab.launch(["train", "--mode=nope"]) == 2  # the CLI's usage error, passed through
    assert "invalid choice: 'nope'" in capfd.readouterr().err


# -- command line and errors ------------------------------------------------------------------


def test_parses_grid_entries_modes_seeds_and_extras(lab):
    args = lab.parse_args(["--out", "d", "--warm-start", "w", "--grid",
                           "a:--config.x.y=(8, 8), --config.z=1", "--grid", "b", "--",
                           "--config.q=2", "--config=configs/sokoban.py:micro"])  # fmt: skip
    assert args.grid == (lab.GridEntry("a", ("--config.x.y=(8, 8)", "--config.z=1")),
                         lab.GridEntry("b"))  # fmt: skip
    assert args.modes == ("turbo_kl", "ppo") and args.seeds == (0, 1, 2)
    assert args.extras == ("--config.q=2", "--config=configs/sokoban.py:micro")
    only = lab.parse_args(["--out", "d", "--report-only", "--modes", "ppo"])
    assert only.grid is None and only.seeds is None and only.modes == ("ppo",)


def test_resolves_run_dirs_model_dirs_and_seed_patterns(lab, tmp_path):
    model = fake_model(tmp_path / "runs" / "ws3" / "sft_model")
    assert lab.resolve_warm_start(str(tmp_path / "runs" / "ws3"), 0) == model
    assert lab.resolve_warm_start(str(tmp_path / "runs" / "ws{seed}" / "sft_model"), 3) == model
    with pytest.raises(lab.LabError, match=r"\(seed 4\) not found: make one with `gtr-turbo sft"):
        lab.resolve_warm_start(str(tmp_path / "runs" / "ws{seed}"), 4)
    with pytest.raises(lab.LabError, match="is not a model directory"):
        lab.resolve_warm_start(str(tmp_path / "runs"), 0)


def one_line_error(lab, argv, capsys) -> str:
    code = lab.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("lab: error: "), err
    return err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--modes", "ppo,foo"], "unknown mode 'foo' in --modes; known: ppo, gtr"),
        (["--seeds", "0,x"], "expected integers"),
        (["--grid", "a b:--config.x=1"], "NAME must be letters"),
        (["--grid", "a:rl.kl_beta=1"], "expected --config.KEY=VALUE"),
        (["--grid", "a:--config.rl.mode=ppo"], "the lab sets the mode and seed"),
        (["--", "--smoke"], "after --: expected --config.KEY=VALUE"),
        (["--updates", "0"], "need >= 1"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--grid", "a:--config.rl.no_such_key=1"], "grid 'a', mode turbo_kl: unknown config key"),
        (["--grid", "a:--config.rl.kl_beta=oops"], "grid 'a', mode turbo_kl:"),
    ],
)
def test_bad_input_is_one_line(lab, tmp_path, capsys, extra, message):
    fake_model(tmp_path / "ws" / "sft_model")
    base = ["--out", str(tmp_path / "lab"), "--warm-start", str(tmp_path / "ws")]
    assert message in one_line_error(lab, [*base, *extra], capsys)
    assert not (tmp_path / "lab").exists()  # nothing written before the input is good


def test_missing_warm_starts_and_directories_are_one_line(lab, tmp_path, capsys):
    fake_model(tmp_path / "ws0" / "sft_model")
    out = str(tmp_path / "lab")
    err = one_line_error(lab, ["--out", out, "--warm-start", str(tmp_path / "ws{seed}")], capsys)
    assert "ws1 (seed 1) not found" in err and "gtr-turbo sft --seed=1" in err
    err = one_line_error(lab, ["--out", out, "--warm-start-per-seed", "ws"], capsys)
    assert "has no {seed}" in err
    assert "is needed to train" in one_line_error(lab, ["--out", out], capsys)
    assert "nothing to report" in one_line_error(lab, ["--out", out, "--report-only"], capsys)
    assert "--out" in one_line_error(lab, ["--report-only"], capsys)


def test_a_lab_directory_keeps_its_settings(lab, tmp_path, fake_launch, capsys):
    fake_model(tmp_path / "ws" / "sft_model")
    base = ["--out", str(tmp_path / "lab"), "--warm-start", str(tmp_path / "ws"), "--seeds", "0",
            "--modes", "ppo"]  # fmt: skip
    assert lab.main([*base, "--grid", "a:--config.rl.kl_beta=0.5"]) == 0
    err = one_line_error(lab, [*base, "--grid", "a:--config.rl.kl_beta=1.0"], capsys)
    assert "grid 'a' was run with --config.rl.kl_beta=0.5" in err
    err = one_line_error(lab, [*base, "--updates", "7"], capsys)
    assert "other settings (updates: None -> 7)" in err


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_at_smoke_size(lab, tmp_path, monkeypatch, capsys):
    """A smoke warm start, then the lab for 1 mode x 1 seed in a real `gtr-turbo train` process;
    rerun, it launches nothing."""
    from gtr_turbo_jax import cli

    ws = tmp_path / "ws0"
    assert cli.main(["sft", "--env=sokoban", "--seed=0", f"--workdir={ws}", "--smoke",
                     "--config.train.tensorboard=False"]) == 0  # fmt: skip
    argv = ["--out", str(tmp_path / "lab"), "--warm-start-per-seed", str(tmp_path / "ws{seed}"),
            "--modes", "ppo", "--seeds", "0", "--smoke", "--",
            "--config.train.tensorboard=False"]  # fmt: skip
    assert lab.main(argv) == 0
    run = tmp_path / "lab" / "default" / "ppo" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["path"] == str(ws / "sft_model") and config["warm_start"]["steps"] == 0
    assert summary["mode"] == "ppo" and summary["updates"] == 3
    assert "| default | ppo | 1 |" in (tmp_path / "lab" / "results.md").read_text()
    assert (tmp_path / "lab" / "results.png").is_file()
    monkeypatch.setattr(lab, "launch", lambda argv: pytest.fail(f"launched {argv}"))
    assert lab.main(argv) == 0
