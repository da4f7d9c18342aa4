"""`gtr-turbo plot`: the drawn data equals hand-worked series, overlaid runs, PNG files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gtr_turbo_jax.plot import (
    DPI,
    FIGSIZE,
    Run,
    eval_label,
    load_runs,
    metric_figure,
    plot_runs,
    series,
    smooth,
    train_label,
)
from gtr_turbo_jax.train.logger import MetricsLogger

NAN = float("nan")

# Two updates with training metrics, an eval point after the second, a diverged KL (null -> NaN).
RECORDS = [
    {"step": 0, "env_steps": 8, "success_rate": 0.0, "kl_mean": 0.5},
    {"step": 1, "env_steps": 16, "success_rate": 0.25, "kl_mean": NAN},
    {"step": 1, "env_steps": 16, "eval/success_rate": 0.5},
    {"step": 2, "success_rate": 0.75},  # no env_steps: not drawn over env steps
    {"step": 3, "env_steps": 32, "success_rate": 1.0, "kl_mean": 0.25, "eval/success_rate": 0.6},
]


def _assert_same(actual, expected):
    np.testing.assert_array_equal(np.asarray(actual[0]), np.asarray(expected[0], np.float64))
    np.testing.assert_array_equal(np.asarray(actual[1]), np.asarray(expected[1], np.float64))


def test_series_keeps_records_holding_both_keys_in_order():
    _assert_same(series(RECORDS, "success_rate"), ([8, 16, 32], [0.0, 0.25, 1.0]))
    _assert_same(series(RECORDS, "eval/success_rate"), ([16, 32], [0.5, 0.6]))
    _assert_same(series(RECORDS, "success_rate", x="step"), ([0, 1, 2, 3], [0, 0.25, 0.75, 1]))
    _assert_same(series(RECORDS, "kl_mean"), ([8, 16, 32], [0.5, NAN, 0.25]))  # NaN: a gap
    _assert_same(series(RECORDS, "self_bleu"), ([], []))


def test_smooth_is_debiased_ema_skipping_nan():
    # weight 0.5: averages 0.5*1 = 0.5 -> /0.5 = 1; then 0.25 + 1.5 = 1.75 -> /0.75; NaN skipped;
    # then 0.875 + 2.5 = 3.375 -> /0.875.
    expected = [1.0, 1.75 / 0.75, NAN, 3.375 / 0.875]
    np.testing.assert_allclose(smooth(np.array([1.0, 3.0, NAN, 5.0]), 0.5), expected)
    np.testing.assert_array_equal(smooth(np.array([2.0, 4.0]), 0.0), [2.0, 4.0])
    with pytest.raises(ValueError, match="smoothing must be in \\[0, 1\\), got 1.0"):
        smooth(np.array([1.0]), 1.0)


def _write_run(run_dir, records, mode=None, **sections):
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        for record in records:
            logger.log(record["step"], {k: v for k, v in record.items() if k != "step"})
    if mode is not None:
        config = {"rl": {"mode": mode}, "seed": 0, **sections}
        (run_dir / "config.json").write_text(json.dumps(config))


OTHER = [
    {"step": 0, "env_steps": 10, "success_rate": 0.1, "valid_rate": 0.9},
    {"step": 1, "env_steps": 20, "success_rate": 0.3, "valid_rate": 1.0},
]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    first, second = root / "sokoban-turbo_kl-1", root / "sokoban-ppo-1"
    _write_run(
        first,
        RECORDS,
        mode="turbo_kl",
        sampling={"temperature": 1.0, "eval_temperature": 0.0},
        train={"eval_episodes": 200},
    )
    _write_run(second, OTHER)  # no config.json: labelled by its directory name
    return first, second


def _lines_by_gid(figure):
    (ax,) = figure.axes
    return {line.get_gid(): line for line in ax.get_lines()}


def test_figure_draws_each_runs_series_and_eval_points(two_runs):
    runs = load_runs(two_runs)
    assert [run.label for run in runs] == ["turbo_kl", "sokoban-ppo-1"]
    figure = metric_figure(runs, "success_rate")
    lines = _lines_by_gid(figure)
    assert set(lines) == {"turbo_kl|train", "turbo_kl|eval", "sokoban-ppo-1|train"}
    _assert_same(lines["turbo_kl|train"].get_data(), ([8, 16, 32], [0.0, 0.25, 1.0]))
    _assert_same(lines["turbo_kl|eval"].get_data(), ([16, 32], [0.5, 0.6]))
    _assert_same(lines["sokoban-ppo-1|train"].get_data(), ([10, 20], [0.1, 0.3]))
    assert lines["turbo_kl|eval"].get_marker() == "o"
    assert lines["turbo_kl|eval"].get_linestyle() == "--"
    assert lines["turbo_kl|eval"].get_color() == lines["turbo_kl|train"].get_color()
    assert lines["sokoban-ppo-1|train"].get_color() != lines["turbo_kl|train"].get_color()
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    # Each entry says what the curve is: the live training window, the held-out evaluation.
    assert legend == [
        "turbo_kl: training success (sampled, episodes by start update, last 200)",
        "turbo_kl: held-out success (greedy, 200 episodes)",
        "sokoban-ppo-1: training success (sampled, episodes by start update, last 200)",
    ]

    # valid_rate: only the second run logged it; self_bleu: nobody did.
    only = _lines_by_gid(metric_figure(runs, "valid_rate"))
    assert list(only) == ["sokoban-ppo-1|train"]
    assert metric_figure(runs, "self_bleu") is None


def test_curve_labels_say_what_each_curve_is():
    assert train_label("return_mean") == (
        "training return (sampled, episodes by start update, last 200)"
    )
    assert train_label("kl_mean") == "training (sampled, per update)"
    sampled = {"sampling": {"eval_temperature": 0.7}, "train": {"eval_episodes": 100}}
    assert (
        eval_label("success_rate", sampled) == "held-out success (sampled at T=0.7, 100 episodes)"
    )
    assert eval_label("grounding", {}) == "held-out thought grounding accuracy"  # no config.json
    assert eval_label("valid_rate", {"train": {"eval_episodes": 8}}) == (
        "held-out valid-reply rate (8 episodes)"
    )


def test_smoothed_figure_draws_raw_and_smoothed_curves():
    run = Run(label="r", records=[{"env_steps": i, "return_mean": v} for i, v in enumerate([1, 3])])
    lines = _lines_by_gid(metric_figure([run], "return_mean", smoothing=0.5))
    _assert_same(lines["r|train"].get_data(), ([0, 1], [1, 3]))
    _assert_same(lines["r|smoothed"].get_data(), ([0, 1], [1, 1.75 / 0.75]))
    assert lines["r|train"].get_alpha() < 1.0


def test_plot_runs_writes_pngs_of_the_logged_metrics(two_runs, tmp_path):
    paths = plot_runs(two_runs, tmp_path / "out")
    assert [p.name for p in paths] == [
        "success_rate.png",
        "kl_mean.png",
        "valid_rate.png",
        "overview.png",
    ]
    width, height = round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)
    for path in paths[:-1]:
        with Image.open(path) as image:
            image.load()  # decodes the whole file
            assert image.format == "PNG" and image.size == (width, height)
    with Image.open(paths[-1]) as image:
        image.load()
        assert image.size == (960, 640)  # 2 x 2 panels of 4.8 x 3.2 inches at 100 dpi


def test_plot_runs_defaults_to_first_runs_plots_dir(two_runs):
    paths = plot_runs(two_runs[1:], metrics=("valid_rate",))
    assert paths == [two_runs[1] / "plots" / "valid_rate.png", two_runs[1] / "plots/overview.png"]
    assert all(path.is_file() for path in paths)


def test_shared_labels_get_the_directory_name(tmp_path):
    for seed in (1, 2):
        _write_run(tmp_path / f"seed{seed}", OTHER, mode="ppo")
    runs = load_runs([tmp_path / "seed1", tmp_path / "seed2"])
    assert [run.label for run in runs] == ["ppo (seed1)", "ppo (seed2)"]


def test_user_mistakes_are_one_clear_line(two_runs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl in .*empty"):
        plot_runs([two_runs[0], tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(ValueError, match="x axis 'wall_s' is not logged by any run"):
        plot_runs(two_runs, tmp_path / "out", x="wall_s")
    with pytest.raises(ValueError, match="none of the metrics \\['grounding'\\]"):
        plot_runs(two_runs, tmp_path / "out", metrics=("grounding",))
    with pytest.raises(ValueError, match="at least one run directory"):
        plot_runs([], tmp_path / "out")
