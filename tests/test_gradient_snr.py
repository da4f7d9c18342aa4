"""experiments/gradient_snr.py's estimate on synthetic gradients: a shared signal plus noise."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def gradient_snr(load_experiment):
    return load_experiment("gradient_snr")


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0, 3.0])
def test_recovers_the_signal_to_noise_of_synthetic_gradients(gradient_snr, ratio):
    # g_k = s + n_k in many dimensions: |s| / |n_k| is `ratio` up to the noise's own spread.
    rng = np.random.default_rng(0)
    dims, batches = 200_000, 6
    signal = rng.normal(size=dims) * ratio / np.sqrt(dims)
    grads = signal + rng.normal(size=(batches, dims)) / np.sqrt(dims)
    result = gradient_snr.signal_to_noise(grads)
    assert result["batches"] == batches
    assert result["signal_to_noise"] == pytest.approx(ratio, abs=0.02 + 0.02 * ratio)
    assert result["mean_cosine"] == pytest.approx(ratio**2 / (1 + ratio**2), abs=0.01)


def test_anticorrelated_gradients_read_as_no_signal(gradient_snr):
    grads = np.array([[1.0, 0.0], [-1.0, 0.0]])
    result = gradient_snr.signal_to_noise(grads)
    assert result["mean_cosine"] == pytest.approx(-1.0)
    assert result["signal_to_noise"] == 0.0
