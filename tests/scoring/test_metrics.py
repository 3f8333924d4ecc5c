"""Metrics against independent NumPy references and hand-checked cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.scoring import metrics


def _random_pair(seed: int, shape=(4, 16, 16, 1), fg=0.4):
    rng = np.random.default_rng(seed)
    probs = rng.uniform(size=shape).astype(np.float32)
    labels = (rng.uniform(size=shape) < fg).astype(np.float32)
    return probs, labels


# ---- independent NumPy references (loops over images and bins) --------------------------------


def np_dice_iou(probs, labels, threshold):
    dices, ious = [], []
    for p, y in zip(probs, labels, strict=True):
        pred = p.ravel() > threshold
        truth = y.ravel() > 0.5
        inter = np.logical_and(pred, truth).sum()
        union = np.logical_or(pred, truth).sum()
        total = pred.sum() + truth.sum()
        dices.append(1.0 if total == 0 else 2.0 * inter / total)
        ious.append(1.0 if union == 0 else inter / union)
    return np.array(dices), np.array(ious)


def np_ece(probs, labels, num_bins, variant):
    p = probs.astype(np.float64).ravel()
    y = labels.ravel() > 0.5
    if variant == "top_label":
        conf = np.maximum(p, 1 - p)
        correct = (p > 0.5) == y
    else:
        conf = p
        correct = y.astype(np.float64)
    total = 0.0
    for k in range(num_bins):
        lo, hi = k / num_bins, (k + 1) / num_bins
        sel = (conf >= lo) & (conf < hi)
        if k == num_bins - 1:
            sel |= conf == 1.0
        if sel.any():
            total += sel.sum() / conf.size * abs(np.mean(correct[sel]) - np.mean(conf[sel]))
    return total


# ---- per-image functions ----------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_dice_iou_match_numpy(threshold):
    probs, labels = _random_pair(0)
    ref_dice, ref_iou = np_dice_iou(probs, labels, threshold)
    np.testing.assert_allclose(metrics.dice(probs, labels, threshold), ref_dice, rtol=1e-6)
    np.testing.assert_allclose(metrics.iou(probs, labels, threshold), ref_iou, rtol=1e-6)


def test_brier_nll_match_numpy():
    probs, labels = _random_pair(1)
    probs[0, 0, 0, 0], labels[0, 0, 0, 0] = 0.0, 1.0  # clipped by eps, not infinite
    p = np.clip(probs.astype(np.float64), metrics.NLL_EPS, 1 - metrics.NLL_EPS)
    ref_nll = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean(axis=(1, 2, 3))
    ref_brier = ((probs.astype(np.float64) - labels) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.brier(probs, labels), ref_brier, rtol=1e-5)
    np.testing.assert_allclose(metrics.nll(probs, labels), ref_nll, rtol=1e-4)
    assert np.isfinite(metrics.nll(probs, labels)).all()


@pytest.mark.parametrize("variant", metrics.ECE_VARIANTS)
@pytest.mark.parametrize("num_bins", [10, 7])
def test_ece_matches_numpy(variant, num_bins):
    probs, labels = _random_pair(2)
    got = metrics.ece(probs, labels, num_bins, variant)
    np.testing.assert_allclose(got, np_ece(probs, labels, num_bins, variant), atol=1e-5)
    per_image = metrics.ece(probs, labels, num_bins, variant, per_image=True)
    ref = [np_ece(p[None], y[None], num_bins, variant) for p, y in zip(probs, labels, strict=True)]
    np.testing.assert_allclose(per_image, ref, atol=1e-5)


def test_ece_jits_with_static_args():
    probs, labels = _random_pair(3)
    fn = jax.jit(metrics.ece, static_argnames=("num_bins", "variant", "per_image"))
    np.testing.assert_allclose(
        fn(probs, labels, num_bins=10, variant="foreground"),
        np_ece(probs, labels, 10, "foreground"),
        atol=1e-5,
    )


def test_empty_and_full_masks():
    empty = np.zeros((1, 8, 8, 1), np.float32)
    full = np.ones((1, 8, 8, 1), np.float32)
    some = empty.copy()
    some[0, :2, :2] = 1.0
    # empty prediction, empty truth: defined as 1
    assert float(metrics.dice(empty, empty)[0]) == 1.0
    assert float(metrics.iou(empty, empty)[0]) == 1.0
    # empty truth, non-empty prediction (and the reverse): 0
    assert float(metrics.dice(some, empty)[0]) == 0.0
    assert float(metrics.iou(some, empty)[0]) == 0.0
    assert float(metrics.dice(empty, some)[0]) == 0.0
    # all foreground
    assert float(metrics.dice(full, full)[0]) == 1.0
    assert float(metrics.iou(full, full)[0]) == 1.0
    # 4 of 64 pixels predicted against a full mask: Dice 2*4/(4+64), IoU 4/64
    np.testing.assert_allclose(metrics.dice(some, full), [8 / 68], rtol=1e-6)
    np.testing.assert_allclose(metrics.iou(some, full), [4 / 64], rtol=1e-6)
    # perfect hard predictions are perfectly calibrated
    assert float(metrics.ece(full, full)) == 0.0
    assert float(metrics.brier(empty, empty)[0]) == 0.0
    state = metrics.update(
        metrics.init(), np.concatenate([empty, empty]), np.concatenate([empty, empty])
    )
    out = metrics.compute(state)
    assert float(out["dice_pooled"]) == 1.0 and float(out["dice"]) == 1.0


def test_perfectly_calibrated_predictor_has_near_zero_ece():
    rng = np.random.default_rng(4)
    probs = rng.uniform(size=(4, 256, 256, 1)).astype(np.float32)
    labels = (rng.uniform(size=probs.shape) < probs).astype(np.float32)
    assert float(metrics.ece(probs, labels, 10, "foreground")) < 0.01
    assert float(metrics.ece(probs, labels, 10, "top_label")) < 0.01
    # the same probabilities squared are badly calibrated: the metric does see miscalibration
    assert float(metrics.ece(probs**2, labels, 10, "foreground")) > 0.1


@pytest.mark.parametrize("p", [0.9, 0.1])
def test_constant_predictor_on_half_mask(p):
    labels = np.zeros((2, 16, 16, 1), np.float32)
    labels[:, :8] = 1.0  # exactly 50 % foreground
    probs = np.full_like(labels, p)
    # top-label: confidence 0.9, accuracy 0.5; foreground: p vs frequency 0.5
    np.testing.assert_allclose(metrics.ece(probs, labels, 10, "top_label"), 0.4, atol=1e-6)
    np.testing.assert_allclose(metrics.ece(probs, labels, 10, "foreground"), 0.4, atol=1e-6)


def test_calibration_sums_stay_exact_on_many_pixels():
    # half a million pixels in one bin: a sequential float32 sum would drift by ~1e-3 here
    labels = np.zeros((2, 512, 512, 1), np.float32)
    labels[:, :256] = 1.0
    probs = np.full_like(labels, 0.9)
    state = metrics.update(metrics.init(), probs, labels)
    np.testing.assert_allclose(metrics.compute(state)["ece_top_label"], 0.4, atol=1e-6)


def test_constant_predictor_on_80_percent_mask():
    labels = np.zeros((1, 10, 10, 1), np.float32)
    labels[:, :8] = 1.0
    probs = np.full_like(labels, 0.9)
    np.testing.assert_allclose(metrics.ece(probs, labels, 10, "top_label"), 0.1, atol=1e-6)
    np.testing.assert_allclose(metrics.ece(probs, labels, 5, "foreground"), 0.1, atol=1e-6)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="labels shape"):
        metrics.dice(np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 4, 2)))
    with pytest.raises(ValueError, match="unknown ECE variant"):
        metrics.ece(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)), variant="classwise")
    with pytest.raises(ValueError, match="num_bins"):
        metrics.init(0)


# ---- accumulator -------------------------------------------------------------------------------


def _assert_states_equal(a, b, rtol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jnp.integer):
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6)


def test_accumulator_split_batches_equals_one_shot_and_direct():
    probs, labels = _random_pair(5, shape=(6, 16, 16, 1))
    one_shot = metrics.update(metrics.init(8), probs, labels, 0.4)
    split = metrics.init(8)
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        split = metrics.update(split, probs[sl], labels[sl], 0.4)
    _assert_states_equal(one_shot, split)

    out = metrics.compute(split)
    ref_dice, ref_iou = np_dice_iou(probs, labels, 0.4)
    np.testing.assert_allclose(out["dice"], ref_dice.mean(), rtol=1e-5)
    np.testing.assert_allclose(out["iou"], ref_iou.mean(), rtol=1e-5)
    # pooled: one big "image"
    pooled_dice, pooled_iou = np_dice_iou(probs.reshape(1, -1), labels.reshape(1, -1), 0.4)
    np.testing.assert_allclose(out["dice_pooled"], pooled_dice[0], rtol=1e-5)
    np.testing.assert_allclose(out["iou_pooled"], pooled_iou[0], rtol=1e-5)
    for variant in metrics.ECE_VARIANTS:
        np.testing.assert_allclose(
            out[f"ece_{variant}"], np_ece(probs, labels, 8, variant), atol=1e-5
        )
    np.testing.assert_allclose(out["brier"], ((probs - labels) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(out["nll"], np.mean(metrics.nll(probs, labels)), rtol=1e-5)
    assert int(out["num_images"]) == 6 and int(out["num_pixels"]) == 6 * 256


def test_merge_is_associative_commutative_with_identity():
    states = [
        metrics.update(metrics.init(), *_random_pair(10 + i, shape=(2, 8, 8, 1))) for i in range(3)
    ]
    a, b, c = states
    _assert_states_equal(
        metrics.merge(metrics.merge(a, b), c), metrics.merge(a, metrics.merge(b, c))
    )
    _assert_states_equal(metrics.merge(a, b), metrics.merge(b, a))
    _assert_states_equal(metrics.merge(a, metrics.init()), a)


def test_valid_mask_drops_padded_images():
    probs, labels = _random_pair(6, shape=(3, 8, 8, 1))
    masked = metrics.update(metrics.init(), probs, labels, valid=np.array([True, True, False]))
    direct = metrics.update(metrics.init(), probs[:2], labels[:2])
    _assert_states_equal(masked, direct)


def test_update_inside_jit_and_single_process_merge():
    probs, labels = _random_pair(7)

    @jax.jit
    def step(state, p, y):
        return metrics.update(state, p, y)

    state = step(metrics.init(), probs, labels)
    _assert_states_equal(state, metrics.update(metrics.init(), probs, labels))
    _assert_states_equal(metrics.merge_across_processes(state), state)


def test_reliability_bins():
    probs, labels = _random_pair(8)
    state = metrics.update(metrics.init(5), probs, labels)
    bins = metrics.reliability_bins(state, "foreground")
    p, y = probs.ravel(), labels.ravel()
    idx = np.minimum((p.astype(np.float64) * 5).astype(int), 4)
    np.testing.assert_array_equal(bins["count"], np.bincount(idx, minlength=5))
    for k in range(5):
        np.testing.assert_allclose(bins["confidence"][k], p[idx == k].mean(), rtol=1e-5)
        np.testing.assert_allclose(bins["accuracy"][k], y[idx == k].mean(), rtol=1e-6)
    np.testing.assert_allclose(bins["edges"], np.linspace(0, 1, 6))
    np.testing.assert_allclose(bins["fraction"].sum(), 1.0)
    np.testing.assert_allclose(bins["ece"], np_ece(probs, labels, 5, "foreground"), atol=1e-5)
    top = metrics.reliability_bins(state, "top_label")
    assert np.isnan(top["confidence"][:2]).all()  # top-label confidence is never below 0.5
    assert top["count"][:2].sum() == 0
