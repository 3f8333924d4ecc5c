"""Multi-class metrics, fusion and uncertainty against independent NumPy loops and hand cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.scoring import fusion, metrics
from jdiffseg.scoring import multiclass as mc


def _random_case(rng, batch=3, size=8, k=4, n=None):
    """Softmax probabilities (B, [n,] H, W, K) and labels (B, H, W) that follow them loosely."""
    shape = (batch, size, size, k) if n is None else (batch, n, size, size, k)
    logits = 2.0 * rng.standard_normal(shape)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, k, (batch, size, size))
    return probs.astype(np.float32), labels


def np_per_class(pred, truth, k):
    """Dice and IoU of every class of one image by counting pixels; absent/absent = 1."""
    dice, iou = np.ones(k), np.ones(k)
    for c in range(k):
        p, t = pred == c, truth == c
        tp, fp, fn = (p & t).sum(), (p & ~t).sum(), (~p & t).sum()
        if tp + fp + fn:
            dice[c], iou[c] = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
    return dice, iou


def np_ece(conf, hit, bins):
    total, n = 0.0, conf.size
    for b in range(bins):
        sel = (conf >= b / bins) & ((conf < (b + 1) / bins) if b < bins - 1 else (conf <= 1))
        if sel.any():
            total += sel.sum() / n * abs(hit[sel].mean() - conf[sel].mean())
    return total


def test_per_image_metrics_match_numpy():
    rng = np.random.default_rng(0)
    probs, labels = _random_case(rng)
    out = mc.per_image_metrics(probs, labels[..., None], num_bins=7)
    k = probs.shape[-1]
    for b in range(probs.shape[0]):
        pred = probs[b].argmax(-1)
        dice, iou = np_per_class(pred, labels[b], k)
        np.testing.assert_allclose(out["dice"][b], dice, rtol=1e-6)
        np.testing.assert_allclose(out["iou"][b], iou, rtol=1e-6)
        np.testing.assert_allclose(out["dice_mean"][b], dice[1:].mean(), rtol=1e-6)
        p, y = probs[b].reshape(-1, k), labels[b].reshape(-1)
        onehot = np.eye(k)[y]
        np.testing.assert_allclose(out["brier"][b], ((p - onehot) ** 2).sum(1).mean(), rtol=1e-5)
        np.testing.assert_allclose(
            out["nll"][b], -np.log(p[np.arange(y.size), y]).mean(), rtol=1e-5
        )
        top = np_ece(p.max(1), p.argmax(1) == y, 7)
        np.testing.assert_allclose(out["ece_top_label"][b], top, atol=1e-6)
        classwise = np.mean([np_ece(p[:, c], y == c, 7) for c in range(k)])
        np.testing.assert_allclose(out["ece_classwise"][b], classwise, atol=1e-6)


def test_hand_checked_case_and_absent_class_convention():
    # 2x2 image, classes 0..3. Truth [[1, 1], [2, 0]]; prediction [[1, 2], [2, 0]]; class 3
    # appears nowhere and scores 1 by convention.
    truth = np.array([[[1, 1], [2, 0]]])
    pred = np.array([[[1, 2], [2, 0]]])
    probs = np.eye(4, dtype=np.float32)[pred]
    out = mc.per_image_metrics(probs, truth)
    np.testing.assert_allclose(out["dice"][0], [1.0, 2 / 3, 2 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(out["iou"][0], [1.0, 0.5, 0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(out["dice_mean"][0], (2 / 3 + 2 / 3 + 1) / 3, rtol=1e-6)
    conf = mc.confusion_matrix(jnp.asarray(pred), jnp.asarray(truth), 4)[0]
    want = np.zeros((4, 4), int)
    want[0, 0], want[1, 1], want[1, 2], want[2, 2] = 1, 1, 1, 1
    np.testing.assert_array_equal(conf, want)
    # one-hot predictions: Brier 2 per wrong pixel, top-label ECE = error rate
    np.testing.assert_allclose(out["brier"][0], 2 / 4, rtol=1e-6)
    np.testing.assert_allclose(out["ece_top_label"][0], 1 / 4, rtol=1e-6)


def test_two_classes_reduce_to_the_binary_metrics():
    rng = np.random.default_rng(1)
    p1 = rng.uniform(size=(2, 6, 6, 1)).astype(np.float32)
    truth = (rng.uniform(size=(2, 6, 6, 1)) > 0.6).astype(np.float32)
    truth[1] = 0.0  # an image without foreground
    p1[1] = 0.1  # predicted empty too: Dice 1 in both conventions
    probs = np.concatenate([1 - p1, p1], -1)
    out = mc.per_image_metrics(probs, truth.astype(int), num_bins=10)
    np.testing.assert_allclose(out["dice"][:, 1], metrics.dice(p1, truth), rtol=1e-6)
    np.testing.assert_allclose(out["iou"][:, 1], metrics.iou(p1, truth), rtol=1e-6)
    np.testing.assert_allclose(out["brier"], 2 * metrics.brier(p1, truth), rtol=1e-5)
    np.testing.assert_allclose(out["nll"], metrics.nll(p1, truth), rtol=1e-4)
    np.testing.assert_allclose(
        out["ece_top_label"], metrics.ece(p1, truth, 10, "top_label", per_image=True), atol=1e-6
    )


def test_accumulator_equals_whole_data_and_drops_padding():
    rng = np.random.default_rng(2)
    probs, labels = _random_case(rng, batch=5, k=3)
    state = mc.init(3, num_bins=5)
    state = mc.update(state, probs[:2], labels[:2])
    padded_probs = np.concatenate([probs[2:], probs[:1]])
    padded_labels = np.concatenate([labels[2:], labels[:1]])
    state = mc.update(state, padded_probs, padded_labels, np.array([1, 1, 1, 0]))
    out = mc.compute(state)
    per = mc.per_image_metrics(probs, labels, num_bins=5)
    assert int(out["num_images"]) == 5
    np.testing.assert_allclose(out["dice_per_class"], per["dice"].mean(0), rtol=1e-6)
    np.testing.assert_allclose(out["dice"], per["dice_mean"].mean(), rtol=1e-6)
    np.testing.assert_allclose(out["brier"], per["brier"].mean(), rtol=1e-5)
    pred = probs.argmax(-1)
    want = np.zeros((3, 3), int)
    np.add.at(want, (labels.ravel(), pred.ravel()), 1)
    np.testing.assert_array_equal(out["confusion"], want)
    p, y = probs.reshape(-1, 3), labels.ravel()
    np.testing.assert_allclose(
        out["ece_top_label"], np_ece(p.max(1), p.argmax(1) == y, 5), atol=1e-6
    )
    dice_pooled, _ = np_per_class(pred.ravel(), y, 3)
    np.testing.assert_allclose(out["dice_pooled_per_class"], dice_pooled, rtol=1e-6)


def test_bad_shapes_and_state():
    with pytest.raises(ValueError, match="without its class axis"):
        mc.per_image_metrics(np.zeros((1, 4, 4, 3)), np.zeros((1, 5, 4), int))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        mc.init(1)
    with pytest.raises(ValueError, match="unknown method"):
        mc.fuse(np.zeros((1, 2, 4, 4, 3)), "median")


def test_mean_and_majority_fusion_match_numpy():
    rng = np.random.default_rng(3)
    members, _ = _random_case(rng, batch=2, size=6, k=3, n=4)
    fused = mc.fuse(members, "mean")
    np.testing.assert_array_equal(fused.labels, members.mean(1).argmax(-1))
    votes = np.stack([(members.argmax(-1) == c).sum(1) for c in range(3)], -1)
    np.testing.assert_array_equal(mc.fuse(members, "majority").labels, votes.argmax(-1))
    # a 2-2 split between classes 2 and 1 goes to the lower class
    tie = np.eye(3, dtype=np.float32)[np.array([2, 2, 1, 1])][None, :, None, None]
    assert int(mc.fuse(tie, "majority").labels[0, 0, 0]) == 1


def np_multiclass_staple(d, k, iters, init=0.99):
    """Independent EM in probability space; d (P, n) labels."""
    n = d.shape[1]
    prior = np.array([(d == s).mean() for s in range(k)])
    theta = np.full((n, k, k), (1 - init) / (k - 1))
    for j in range(n):
        np.fill_diagonal(theta[j], init)

    def post(theta):
        w = np.tile(prior, (d.shape[0], 1))
        for j in range(n):
            w *= theta[j][d[:, j]]  # row D_ij of theta_j over true classes s
        return w / w.sum(1, keepdims=True)

    for _ in range(iters):
        w = post(theta)
        for j in range(n):
            for a in range(k):
                theta[j, a] = w[d[:, j] == a].sum(0) / w.sum(0)
    return post(theta), theta


def test_staple_matches_numpy_em_and_finds_the_bad_rater():
    rng = np.random.default_rng(4)
    k, size = 3, 16
    truth = rng.integers(0, k, (1, size, size))
    accuracy = [0.95, 0.9, 0.5]  # rater 2 is often wrong
    members = []
    for acc in accuracy:
        wrong = rng.uniform(size=truth.shape) > acc
        said = np.where(wrong, (truth + rng.integers(1, k, truth.shape)) % k, truth)
        members.append(np.eye(k, dtype=np.float32)[said])
    members = np.stack(members, 1)
    result = mc.staple(members, max_iters=12, tol=0.0)
    d = members[0].argmax(-1).reshape(3, -1).T
    w, theta = np_multiclass_staple(d, k, 12)
    np.testing.assert_allclose(result.probs[0].reshape(-1, k), w, atol=1e-4)
    np.testing.assert_allclose(result.theta[0], theta, atol=1e-4)
    diag = np.diagonal(np.asarray(result.theta[0]), axis1=1, axis2=2).mean(1)
    assert diag[2] < 0.7 < diag[1] < diag[0] + 0.05
    assert (result.labels == truth).mean() > (members[:, 1].argmax(-1) == truth).mean()


def test_uncertainty_maps_match_numpy_and_the_binary_case():
    rng = np.random.default_rng(5)
    members, _ = _random_case(rng, batch=2, size=4, k=3, n=5)
    maps = mc.uncertainty_maps(members)
    mean = members.mean(1)
    entropy = -(mean * np.log2(mean)).sum(-1)
    expected = -(members * np.log2(members)).sum(-1).mean(1)
    np.testing.assert_allclose(maps["entropy"], entropy, rtol=1e-5)
    np.testing.assert_allclose(maps["mutual_information"], entropy - expected, atol=1e-5)
    p1 = rng.uniform(size=(2, 5, 4, 4, 1)).astype(np.float32)
    binary = fusion.uncertainty_maps(p1)
    two = mc.uncertainty_maps(np.concatenate([1 - p1, p1], -1))
    np.testing.assert_allclose(two["entropy"], binary["entropy"][..., 0], atol=1e-5)
    np.testing.assert_allclose(
        two["mutual_information"], binary["mutual_information"][..., 0], atol=1e-5
    )
    # one-hot members that agree: no uncertainty
    agree = np.broadcast_to(np.eye(3, dtype=np.float32)[1], (1, 3, 2, 2, 3))
    assert float(jnp.max(mc.uncertainty_maps(agree)["entropy"])) == 0.0
