"""Mean, std and bootstrap intervals of per-image metrics."""

import math

import numpy as np
import pytest

from jdiffseg.scoring import stats


def test_summary_mean_std_and_interval():
    rng = np.random.default_rng(0)
    values = rng.normal(0.7, 0.1, size=400)
    out = stats.summarize(values, seed=1)
    assert out["n"] == 400
    np.testing.assert_allclose(out["mean"], values.mean())
    np.testing.assert_allclose(out["std"], values.std(ddof=1))
    assert out["ci_low"] < out["mean"] < out["ci_high"]
    # the bootstrap interval of a mean approaches the normal one: mean ± 1.96 s / sqrt(n)
    half = 1.959964 * values.std(ddof=1) / math.sqrt(values.size)
    np.testing.assert_allclose(out["ci_low"], values.mean() - half, atol=0.15 * half)
    np.testing.assert_allclose(out["ci_high"], values.mean() + half, atol=0.15 * half)


def test_bootstrap_is_seeded():
    values = np.random.default_rng(2).uniform(size=30)
    assert stats.bootstrap_ci(values, seed=3) == stats.bootstrap_ci(values, seed=3)
    assert stats.bootstrap_ci(values, seed=3) != stats.bootstrap_ci(values, seed=4)


def test_bootstrap_of_a_two_point_sample_uses_resampled_means():
    # resampled means of [0, 1] with n=2 are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4
    low, high = stats.bootstrap_ci([0.0, 1.0], num_resamples=4000, confidence=0.9, seed=0)
    assert (low, high) == (0.0, 1.0)
    low, high = stats.bootstrap_ci([0.0, 1.0], num_resamples=4000, confidence=0.4, seed=0)
    assert (low, high) == (0.5, 0.5)


def test_chunked_resampling_matches_shape():
    # many values force several chunks of resamples; the interval still brackets the mean
    values = np.random.default_rng(5).uniform(size=50_000)
    low, high = stats.bootstrap_ci(values, num_resamples=200, seed=0)
    assert low < values.mean() < high and high - low < 0.01


def test_constant_and_single_values():
    out = stats.summarize([0.5] * 10)
    assert (out["ci_low"], out["ci_high"], out["std"]) == (0.5, 0.5, 0.0)
    assert stats.summarize([0.3])["std"] == 0.0


def test_bad_values_raise_with_the_metric_name():
    with pytest.raises(ValueError, match="'dice'"):
        stats.summarize([], name="dice")
    with pytest.raises(ValueError, match=r"non-finite value.*'iou'.*index 1"):
        stats.summarize([0.1, float("nan")], name="iou")
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_ci([0.1, 0.2], confidence=1.5)


def test_summarize_all_and_format():
    table = stats.summarize_all({"dice": [0.8, 0.9, 1.0], "iou": [0.5, 0.5, 0.5]}, seed=0)
    assert set(table) == {"dice", "iou"}
    np.testing.assert_allclose(table["dice"]["mean"], 0.9)
    assert stats.format_summary(table["iou"]) == "0.500 ± 0.000 [0.500, 0.500]"
