"""The calibration study's scores against independent NumPy references and hand-made curves:
mean-threshold Dice, top-label ECE, Brier, NLL, binarity, nested ensemble sizes, the
validation curve of a run's log and where it levels off."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jdiffseg.study import calibration_scores as scores


def _reference(members: np.ndarray, mask: np.ndarray, bins: int = 10) -> dict[str, float]:
    """The scores written out in NumPy, pixel by pixel."""
    p = members.mean(axis=1).astype(np.float64)
    y = mask.astype(np.float64)
    fused, truth = p > 0.5, y > 0.5
    dice = []
    for f, t in zip(fused, truth, strict=True):
        tp, fp, fn = np.sum(f & t), np.sum(f & ~t), np.sum(~f & t)
        dice.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    conf = np.maximum(p, 1 - p).ravel()
    hit = (fused == truth).ravel()
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    ece = sum(abs(hit[idx == k].sum() - conf[idx == k].sum()) for k in range(bins)) / conf.size
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return {"dice": float(np.mean(dice)), "ece": ece, "brier": float(np.mean((p - y) ** 2)),
            "nll": float(np.mean(-(y * np.log(q) + (1 - y) * np.log(1 - q)))),
            "accuracy": float(np.mean(fused == truth)), "confidence": float(np.mean(conf)),
            "binarity": float(np.mean(np.minimum(members, 1 - members) <= 0.05))}


def _samples(rng, images=3, members=4, size=8):
    m = rng.uniform(size=(images, members, size, size, 1)).astype(np.float32)
    m[:, 0] = np.round(m[:, 0])  # one exactly binary member per image
    y = (rng.uniform(size=(images, size, size, 1)) > 0.6).astype(np.float32)
    return m, y


def test_score_ensemble_matches_numpy_reference():
    members, mask = _samples(np.random.default_rng(0))
    got = scores.score_ensemble(members, mask)
    want = _reference(members, mask)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-5), key
    assert got["num_members"] == 4 and got["num_images"] == 3
    assert not any(k.startswith("rater_") for k in got)


def test_identical_members_and_raters_have_no_ambiguity_gap():
    mask = np.zeros((2, 8, 8, 1), np.float32)
    mask[:, 2:6, 2:6] = 1
    members = np.repeat(mask[:, None], 3, axis=1)
    raters = np.repeat(mask[:, None], 4, axis=1)
    got = scores.score_ensemble(members, mask, raters)
    assert got["dice"] == pytest.approx(1.0)
    assert got["rater_ged"] == pytest.approx(0.0, abs=1e-6)
    assert got["rater_hungarian_iou"] == pytest.approx(1.0)
    assert got["rater_diversity"] == pytest.approx(0.0, abs=1e-6)
    assert got["binarity"] == 1.0 and got["ece"] == pytest.approx(0.0, abs=1e-6)


def test_score_sizes_scores_nested_first_members_and_selects_ids():
    members, mask = _samples(np.random.default_rng(1), members=3)
    samples = {"ids": np.asarray(["a", "b", "c"]), "members": members, "mask": mask}
    got = scores.score_sizes(samples, (5, 2, 1, 2))
    assert sorted(got) == [1, 2]  # 5 members were not drawn
    assert got[1]["dice"] == pytest.approx(_reference(members[:, :1], mask)["dice"])
    assert got[2]["ece"] == pytest.approx(_reference(members[:, :2], mask)["ece"], abs=1e-5)
    changed = {**samples, "members": members.copy()}
    changed["members"][:, 2] = 1 - changed["members"][:, 2]  # the third member plays no part
    assert scores.score_sizes(changed, (2,))[2] == got[2]

    picked = scores.score_sizes(samples, (3,), ids=["c", "a"])[3]
    assert picked["num_images"] == 2
    assert picked["brier"] == pytest.approx(
        _reference(members[[2, 0]], mask[[2, 0]])["brier"], abs=1e-6)
    with pytest.raises(ValueError, match=r"no images \['z'\]"):
        scores.score_sizes(samples, (1,), ids=["a", "z"])


def test_plateau_of_a_levelled_and_a_climbing_curve():
    steps = np.arange(100, 900, 100)
    levelled = scores.plateau(steps, [0.5, 0.7, 0.8, 0.84, 0.855, 0.86, 0.858, 0.86])
    assert levelled["best"] == pytest.approx(0.86)
    assert levelled["best_step"] == 600 and levelled["plateau_step"] == 500
    assert levelled["last_step"] == 800 and levelled["reached"]
    assert levelled["gain_last_quarter"] == pytest.approx(0.0)

    climbing = scores.plateau(steps, np.linspace(0.1, 0.8, 8))
    assert climbing["plateau_step"] == 800 and not climbing["reached"]
    assert climbing["gain_last_quarter"] == pytest.approx(0.2)


def test_validation_curve_reads_a_replica_and_names_bad_lines(tmp_path):
    rows = [{"step": 10, "loss": 1.0}, {"step": 100, "val_dice_replica1": 0.4},
            {"step": 200, "val_dice_replica1": 0.6, "val_dice_replica0": 0.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps, values = scores.validation_curve(tmp_path, replica=1)
    np.testing.assert_array_equal(steps, [100, 200])
    np.testing.assert_allclose(values, [0.4, 0.6])
    with pytest.raises(ValueError, match="no 'val_dice' values"):
        scores.validation_curve(tmp_path, replica=None)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 300, "val_dice_re\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:4: not a JSON line"):
        scores.validation_curve(tmp_path, replica=1)
