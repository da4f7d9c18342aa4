"""`experiments/bench/memory.py`: the per-device memory of the update step and of a rollout turn,
compiled from abstract shapes on simulated CPU meshes. Fast: the micro preset (`--quick`) on 1 and
4 devices, FSDP must divide the state. Slow: the 3B preset's update step on 8 devices, so the
real-model path keeps lowering and compiling."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bench" / "memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(bench, capsys, argv: list[str]) -> tuple[list[list[str]], dict]:
    """The rows of the script's memory table (as lists of cells) and its last-line JSON."""
    bench.main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| preset"))
    end = lines.index("", start)
    rows = lines[start + 2 : end]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    return cells, json.loads(lines[-1])


def by_mesh(result: dict) -> dict[tuple[int, int], dict]:
    return {tuple(row["mesh"]): row for row in result["rows"]}


# ~40 s of compiles on 1 and 4 simulated devices
@pytest.mark.slow
def test_quick_table_is_positive_and_fsdp_divides_the_state(bench, capsys):
    cells, result = run(bench, capsys, ["--quick"])
    assert [row[:2] for row in cells] == [["micro", "1 x 1"], ["micro", "1 x 4"]]
    for row in cells:
        numbers = [float(x) for cell in row[2:] for x in cell.split(" / ")]
        assert len(numbers) == 3 + 3 + 7, row
        assert all(x > 0 for x in numbers), row
    rows = by_mesh(result)
    one, four = rows[(1, 1)], rows[(1, 4)]
    # The frozen base's large leaves (the embeddings) and the batch's env axis are divided over
    # fsdp; the micro model's small adapters stay replicated.
    assert four["state_bytes"]["base"] < one["state_bytes"]["base"]
    assert four["update"]["batch"] * 4 == one["update"]["batch"]
    assert four["update"]["arguments"] < one["update"]["arguments"]
    for row in (one, four):
        update = row["update"]
        assert update["aliased"] >= row["state_bytes"]["total"]  # the donated state
        assert row["turn"]["temp"] > 0 and row["turn"]["envs"] == 8
    # The rollout turn reads the weights in the state's layout: split too.
    assert four["turn"]["arguments"] < one["turn"]["arguments"]


@pytest.mark.slow
def test_the_3b_update_step_compiles_on_eight_devices(bench, capsys):
    argv = ["--presets", "qwen2.5-vl-3b", "--devices", "8", "--parts", "update"]
    _, result = run(bench, capsys, argv)
    row = by_mesh(result)[(1, 8)]
    assert row["samples"] == 1024 and row["mode"] == "turbo_kl"  # the paper's batch
    state = row["state_bytes"]
    # 3.75e9 bfloat16 base parameters, about one eighth of them per device.
    assert 0.11 < state["base"] / (3.75e9 * 2) < 0.14, state
    assert row["update"]["temp"] > 0 and row["update"]["aliased"] > 0.9 * state["total"]
