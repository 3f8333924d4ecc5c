"""Per-class pieces of the timestep analysis: recovery scores, class split, mask prior, input
checks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.analysis import curves


def _onehot(labels, k=4):
    return np.eye(k, dtype=np.float32)[labels]


def test_class_recovery_scores_match_numpy():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (3, 6, 6))
    other = np.roll(truth, 1, axis=0)
    pred = rng.uniform(-1.5, 1.5, (3, 6, 6, 4)).astype(np.float32)  # encoded in {-1, 1}
    out = curves.class_recovery_scores(
        jnp.asarray(pred),
        jnp.asarray(_onehot(truth)),
        jnp.asarray(_onehot(other)),
        "plus_minus_one",
    )
    prob = np.clip((pred + 1) / 2, 0, 1)
    prob = prob / prob.sum(-1, keepdims=True)
    labels = prob.argmax(-1)
    for c in range(1, 4):
        for i in range(3):
            p, t = labels[i] == c, truth[i] == c
            den = p.sum() + t.sum()
            want = 1.0 if den == 0 else 2 * (p & t).sum() / den
            np.testing.assert_allclose(out["dice"][i, c - 1], want, rtol=1e-6)
            mse = np.mean((prob[i, ..., c] - (truth[i] == c)) ** 2)
            np.testing.assert_allclose(out["mse"][i, c - 1], mse, rtol=1e-5)
    assert out["chance_dice"].shape == out["iou"].shape == (3, 3)


def test_split_classes_and_prior():
    per_image = {"dice_image": np.arange(24.0).reshape(2, 4, 3), "loss_image": np.ones((2, 4))}
    average, per_class = curves.split_classes(per_image, ["a", "b", "c"])
    np.testing.assert_allclose(average["dice_image"], per_image["dice_image"].mean(-1))
    np.testing.assert_allclose(per_class["b"]["dice_image"], per_image["dice_image"][..., 1])
    assert per_class["c"]["loss_image"] is per_image["loss_image"]
    # a class every mask has in the same place has prior Dice 1; one no mask has scores 1 too
    labels = np.zeros((3, 4, 4), int)
    labels[:, :2] = 1
    labels[0, 3, 3] = 2  # class 2 in one image only: the prior (arg-max of the mean) misses it
    prior = curves.prior_scores(_onehot(labels))
    np.testing.assert_allclose(prior["prior_dice"], [1.0, 2 / 3, 1.0], rtol=1e-6)


def test_bad_one_hot_masks_are_refused_naming_the_pixel():
    masks = _onehot(np.zeros((2, 4, 4), int))
    masks[1, 2, 3, 1] = 1.0  # two classes at one pixel
    with pytest.raises(ValueError, match=r"analysis masks: .*index \(1, 2, 3\)"):
        curves.segmentation_data(np.zeros((2, 4, 4, 3)), masks, seed=0)
