"""Ensemble fusion (mean, majority, STAPLE) and uncertainty maps."""

import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.scoring import fusion


def _truth(rng, batch=2, size=64):
    """Blob-like truth masks (B, H, W, 1) with roughly a third foreground."""
    yy, xx = np.mgrid[:size, :size]
    masks = []
    for _ in range(batch):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, size=2)
        r = rng.uniform(size * 0.25, size * 0.35)
        masks.append(((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.float32))
    return np.stack(masks)[..., None]


def _raters(rng, truth, sens, spec):
    """Members (B, n, H, W, 1); rater j is right w.p. sens[j] on foreground, spec[j] off it."""
    u = rng.uniform(size=(truth.shape[0], len(sens), *truth.shape[1:]))
    t = truth[:, None] > 0.5
    sens = np.asarray(sens)[None, :, None, None, None]
    spec = np.asarray(spec)[None, :, None, None, None]
    return np.where(t, u < sens, u >= spec).astype(np.float32)


def np_staple(decisions, prior, iters, init=0.99, estimate_prior=False):
    """Independent EM in probability space for one image; decisions (P, n) in {0, 1}."""
    d = decisions.astype(np.float64)
    n = d.shape[1]
    p = np.full(n, init)
    q = np.full(n, init)
    for _ in range(iters):
        a = prior * np.prod(np.where(d == 1, p, 1 - p), axis=1)
        b = (1 - prior) * np.prod(np.where(d == 0, q, 1 - q), axis=1)
        w = a / (a + b)
        p = (w[:, None] * d).sum(0) / w.sum()
        q = ((1 - w)[:, None] * (1 - d)).sum(0) / (1 - w).sum()
        if estimate_prior:
            prior = w.mean()
    a = prior * np.prod(np.where(d == 1, p, 1 - p), axis=1)
    b = (1 - prior) * np.prod(np.where(d == 0, q, 1 - q), axis=1)
    return a / (a + b), p, q, prior


def test_mean_and_majority_match_numpy():
    rng = np.random.default_rng(0)
    members = rng.uniform(size=(3, 4, 8, 8, 1)).astype(np.float32)
    mean = members.mean(axis=1)
    np.testing.assert_allclose(fusion.ensemble_mean(members), mean, rtol=1e-6)
    np.testing.assert_array_equal(fusion.mean_threshold(members, 0.4), mean > 0.4)
    votes = (members > 0.5).sum(axis=1)
    np.testing.assert_array_equal(fusion.majority_vote(members), votes > 2)  # 2 of 4 is a tie
    np.testing.assert_array_equal(fusion.fuse(members, "majority").mask, votes > 2)
    np.testing.assert_allclose(fusion.fuse(members, "mean").probs, mean, rtol=1e-6)


def test_tie_goes_to_background():
    members = np.zeros((1, 2, 2, 2, 1), np.float32)
    members[0, 0] = 1.0
    assert float(fusion.majority_vote(members).max()) == 0.0
    assert float(fusion.mean_threshold(members).max()) == 0.0  # mean 0.5 is not > 0.5


def test_unknown_method_and_bad_shape():
    with pytest.raises(ValueError, match="unknown method"):
        fusion.fuse(np.zeros((1, 3, 4, 4, 1)), "median")
    with pytest.raises(ValueError, match="members must have shape"):
        fusion.ensemble_mean(np.zeros((4, 4)))


@pytest.mark.parametrize("estimate_prior", [False, True])
def test_staple_matches_numpy_em(estimate_prior):
    rng = np.random.default_rng(1)
    truth = _truth(rng, batch=2, size=24)
    members = _raters(rng, truth, [0.9, 0.7, 0.8], [0.95, 0.8, 0.7])
    iters = 15
    result = fusion.staple(members, max_iters=iters, tol=0.0, estimate_prior=estimate_prior)
    for b in range(2):
        d = members[b].reshape(3, -1).T
        w, p, q, prior = np_staple(d, d.mean(), iters, estimate_prior=estimate_prior)
        np.testing.assert_allclose(result.prior[b], prior, atol=1e-5)
        np.testing.assert_allclose(result.sensitivity[b], p, atol=1e-4)
        np.testing.assert_allclose(result.specificity[b], q, atol=1e-4)
        np.testing.assert_allclose(np.asarray(result.probs[b]).ravel(), w, atol=1e-4)
    assert result.probs.shape == truth.shape and result.mask.shape == truth.shape


def test_staple_recovers_rater_performance():
    rng = np.random.default_rng(2)
    sens = np.array([0.95, 0.8, 0.7, 0.9, 0.85])
    spec = np.array([0.97, 0.9, 0.8, 0.95, 0.85])
    truth = _truth(rng)
    members = _raters(rng, truth, sens, spec)
    result = fusion.staple(members)
    assert int(result.iterations.max()) < 100  # converged on tolerance
    for b in range(truth.shape[0]):
        np.testing.assert_allclose(result.sensitivity[b], sens, atol=0.05)
        np.testing.assert_allclose(result.specificity[b], spec, atol=0.05)


def test_staple_beats_majority_when_one_rater_is_reliable():
    rng = np.random.default_rng(3)
    truth = _truth(rng)
    members = _raters(rng, truth, [0.98, 0.65, 0.65, 0.65, 0.65], [0.98, 0.65, 0.65, 0.65, 0.65])
    majority_acc = np.mean(np.asarray(fusion.majority_vote(members)) == truth)
    assert majority_acc < 0.9
    for estimate_prior in (False, True):
        result = fusion.staple(members, estimate_prior=estimate_prior)
        staple_acc = np.mean(np.asarray(result.mask) == truth)
        assert staple_acc > 0.96
        assert staple_acc > majority_acc + 0.05
        # it identifies the reliable rater
        assert np.all(np.argmax(np.asarray(result.sensitivity), axis=1) == 0)
        assert np.all(np.asarray(result.specificity)[:, 0] > 0.95)
    # with the prior re-estimated, the reliable rater's sensitivity is recovered too
    result = fusion.staple(members, estimate_prior=True, max_iters=300)
    np.testing.assert_allclose(result.sensitivity[:, 0], 0.98, atol=0.05)
    np.testing.assert_allclose(result.prior, truth.mean(axis=(1, 2, 3)), atol=0.02)


def test_staple_batch_equals_per_image_and_degenerate_cases():
    rng = np.random.default_rng(4)
    truth = _truth(rng, batch=3, size=16)
    members = _raters(rng, truth, [0.9, 0.8, 0.85], [0.9, 0.85, 0.8])
    members[2] = 0.0  # all members empty: no foreground to estimate from
    batched = fusion.staple(members)
    for b in range(3):
        single = fusion.staple(members[b : b + 1])
        np.testing.assert_allclose(batched.probs[b], single.probs[0], atol=1e-6)
    assert np.isfinite(np.asarray(batched.probs)).all()
    assert float(batched.mask[2].max()) == 0.0
    agree = np.repeat(truth[:, None], 4, axis=1)
    np.testing.assert_array_equal(fusion.staple(agree).mask, truth)


def test_uncertainty_maps():
    rng = np.random.default_rng(5)
    members = rng.uniform(size=(2, 5, 6, 6, 1)).astype(np.float32)
    m = members.astype(np.float64).mean(axis=1)
    ref_entropy = -(m * np.log2(m) + (1 - m) * np.log2(1 - m))
    h = -(members * np.log2(members) + (1 - members) * np.log2(1 - members))
    maps = fusion.uncertainty_maps(members)
    np.testing.assert_allclose(maps["variance"], members.var(axis=1), rtol=1e-5)
    np.testing.assert_allclose(maps["entropy"], ref_entropy, rtol=1e-5)
    np.testing.assert_allclose(
        maps["mutual_information"], np.maximum(ref_entropy - h.mean(axis=1), 0), atol=1e-5
    )

    binary = (members > 0.5).astype(np.float32)
    bmaps = fusion.uncertainty_maps(binary)
    np.testing.assert_allclose(bmaps["mutual_information"], bmaps["entropy"], atol=1e-6)
    half = np.zeros((1, 2, 1, 1, 1), np.float32)
    half[0, 0] = 1.0
    np.testing.assert_allclose(fusion.predictive_entropy(half), 1.0, atol=1e-6)
    np.testing.assert_allclose(fusion.ensemble_variance(half), 0.25, atol=1e-6)
    same = np.full((1, 3, 2, 2, 1), 0.3, np.float32)
    np.testing.assert_allclose(fusion.mutual_information(same), 0.0, atol=1e-6)
    assert float(jnp.max(fusion.predictive_entropy(binary[:, :1]))) == 0.0
