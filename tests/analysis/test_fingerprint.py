"""Fingerprints and adapted diffusion against hand-computed small cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from jdiffseg.analysis import fingerprint
from jdiffseg.analysis.results import contribution_sem
from jdiffseg.config import parsing, schema
from jdiffseg.diffusion import schedules, timesteps


def _result(dice_image, dice_blank, mse_image, mse_blank, ts=None, T=None, chance=0.2):
    n = len(dice_image)
    ts = list(range(n)) if ts is None else ts
    curves = {
        "dice_image": dice_image, "dice_blank": dice_blank,
        "iou_image": dice_image, "iou_blank": dice_blank,
        "mse_image": mse_image, "mse_blank": mse_blank,
        "chance_dice_image": [chance] * n, "chance_dice_blank": [chance] * n,
    }
    return {"num_timesteps": T or ts[-1] + 1, "timesteps": ts, "curves": curves}


def test_contribution_is_positive_where_the_image_helps():
    r = _result([1.0, 0.9, 0.8], [1.0, 0.5, 0.2], [0.0, 0.1, 0.2], [0.0, 0.3, 0.6])
    t, d_mse = fingerprint.contribution(r, "mse")
    _, d_dice = fingerprint.contribution(r, "dice")
    np.testing.assert_array_equal(t, [0, 1, 2])
    np.testing.assert_allclose(d_mse, [0.0, 0.2, 0.4])
    np.testing.assert_allclose(d_dice, [0.0, 0.4, 0.6])
    with pytest.raises(KeyError, match="mask_only_workdir"):
        fingerprint.contribution(r, "dice", "mask_only")
    with pytest.raises(ValueError, match="adapt_metric"):
        fingerprint.contribution(r, "ece")


def test_dense_interpolates_strided_curves():
    np.testing.assert_allclose(fingerprint.dense([0, 4, 5], np.array([0.0, 4.0, 2.0]), 6),
                               [0, 1, 2, 3, 4, 2])
    with pytest.raises(ValueError, match="increase"):
        fingerprint.dense([0, 7], np.array([0.0, 1.0]), 6)


def test_range_weights_by_hand():
    delta = np.array([0.0, 1.0, 5.0, 10.0, 5.0, 0.5, 0.0])
    assert fingerprint.adapted_range(delta, 0.1) == (1, 4)
    assert fingerprint.adapted_range(delta, 0.0) == (0, 6)
    w = fingerprint.adapted_weights(np.array([0.0, 2.0, 4.0, -1.0]), floor=0.25)
    np.testing.assert_allclose(w, np.array([0.25, 0.5, 1.0, 0.25]) / 2.0)
    with pytest.raises(ValueError, match="never improves"):
        fingerprint.adapted_weights(np.array([0.0, -1.0]))


def test_warp_by_hand_and_constant_density_is_identity():
    ac = np.array([0.9, 0.5, 0.1])
    np.testing.assert_allclose(fingerprint.warped_alphas_cumprod(np.ones(3), ac), ac)
    # density (3, 1, 1): F = (0, 2, 3)/3, so τ = F⁻¹(0, 1/2, 1) = (0, 3/4, 2).
    warped = fingerprint.warped_alphas_cumprod(np.array([3.0, 1.0, 1.0]), ac)
    expected_mid = np.exp(0.25 * np.log(0.9) + 0.75 * np.log(0.5))
    np.testing.assert_allclose(warped, [0.9, expected_mid, 0.1])


def test_adapted_schedule_puts_more_steps_where_the_image_matters():
    T = 100
    base = schedules.linear_betas(T)
    delta = np.where(np.arange(T) >= 50, 1.0, 0.0)  # the image matters in the second half
    betas = fingerprint.adapted_betas(delta, base, floor=0.1)
    new_ac, old_ac = np.cumprod(1 - betas), np.cumprod(1 - base)
    np.testing.assert_allclose(new_ac[[0, -1]], old_ac[[0, -1]], rtol=1e-9)
    # Steps whose noise level lies in the old second half: far more than half of them.
    assert np.sum(new_ac <= old_ac[50]) > 80
    np.testing.assert_allclose(fingerprint.adapted_betas(np.ones(T), base), base, rtol=1e-9)


def test_half_life_by_hand():
    ts = np.array([0, 10, 20, 30])
    # From 1.0 to chance 0.2, halfway is 0.6, crossed at 10 + (0.8-0.6)/(0.8-0.4)·10 = 15.
    assert fingerprint.half_life(ts, np.array([1.0, 0.8, 0.4, 0.2]), 0.2, 31) == 15 / 30
    assert fingerprint.half_life(ts, np.array([1.0, 1.0, 1.0, 1.0]), 0.2, 31) is None
    assert fingerprint.half_life(ts, np.array([0.1, 0.1, 0.1, 0.1]), 0.2, 31) is None


def test_summary_numbers():
    r = _result([1, 1, 1, 1, 1], [1, 1, 0.6, 0.3, 0.2], [0] * 5, [0, 0.1, 0.4, 0.2, 0.0])
    s = fingerprint.summary(r, metric="mse", fraction=0.5)
    assert s["peak_t"] == 2 and s["peak_contribution"] == pytest.approx(0.4)
    assert s["mean_contribution"] == pytest.approx(0.7 / 5)
    assert s["useful_range"] == [2, 3]
    assert s["no_gain_fraction"] == pytest.approx(3 / 5)
    assert s["half_life_blank"] == pytest.approx((2 + (0.6 - 0.6) / 0.4) / 4)
    assert s["half_life_image"] is None
    json.dumps(s)
    assert "peak" in fingerprint.format_summary(s)


def _config(T: int = 20):
    c = schema.base_config()
    c.diffusion.num_timesteps = T
    c.diffusion.schedule = "cosine"
    return c


def test_overrides_load_into_the_config_and_build(tmp_path):
    T = 20
    ts = [*range(0, T, 3), T - 1]
    blank = [max(0.0, 1.0 - t / 8) for t in ts]
    r = _result([1.0] * len(ts), blank, [0.0] * len(ts), [1 - b for b in blank], ts=ts, T=T)
    for method in fingerprint.METHODS:
        c = _config(T)
        overrides = fingerprint.adapted_overrides(r, c, method, fraction=0.5)
        parsing.update(c, overrides)
        schedules.from_config(c.diffusion)
        sampler = timesteps.from_config(c.diffusion)
        assert sampler.method == {"range": "range", "weights": "weights"}.get(method, "uniform")
    lo, hi = fingerprint.adapted_range(
        fingerprint.dense(ts, 1 - np.array(blank), T), 0.5)
    assert (lo, hi) == (4, 19)  # 1 − blank ≥ 0.5 from t = 4 on
    with pytest.raises(ValueError, match="num_timesteps"):
        fingerprint.adapted_overrides(r, _config(30), "range")

    c = _config(T)
    paths, written = fingerprint.write_adapted(r, c, str(tmp_path))
    table = json.loads((tmp_path / "adapted_config.json").read_text())
    assert table == json.loads(json.dumps(written))
    assert set(table["methods"]) == set(fingerprint.METHODS) and len(paths) == 4
    # The .flags files parse back, through ml_collections' flag machinery, to the overrides.
    for method in fingerprint.METHODS:
        argv = (tmp_path / f"adapted_{method}.flags").read_text().split()
        fv = flags.FlagValues()
        holder = config_flags.DEFINE_config_dict("config", _config(T), flag_values=fv,
                                                 sys_argv=["x", *argv])
        fv(["x", *argv])
        for key, value in table["methods"][method].items():
            got = holder.value
            for part in key.split("."):
                got = got[part]
            if isinstance(value, list):
                np.testing.assert_allclose(got, value, rtol=1e-15)
            else:
                assert got == value


def test_no_gain_is_reported_not_emitted(tmp_path):
    r = _result([0.5] * 4, [0.5] * 4, [0.1] * 4, [0.1] * 4)
    fingerprint.write_adapted(r, _config(4), str(tmp_path))
    table = json.loads((tmp_path / "adapted_config.json").read_text())
    assert all("never improves" in m["error"] for m in table["methods"].values())
    assert not list(tmp_path.glob("*.flags"))


def test_a_peak_within_noise_is_not_adapted_to():
    r = _result([1.0, 1.0, 1.0], [1.0, 0.9, 0.95], [0.0] * 3, [0.0, 0.1, 0.05])
    r["contribution_sem"] = {"mse_blank": [0.0, 0.06, 0.01]}  # peak 0.1 < 2 · 0.06
    assert fingerprint.summary(r)["useful_range"] is None
    with pytest.raises(ValueError, match="standard errors"):
        fingerprint.adapted_overrides(r, _config(3), "range")
    r["contribution_sem"] = {"mse_blank": [0.0, 0.04, 0.01]}
    assert fingerprint.summary(r, fraction=0.6)["useful_range"] == [1, 1]


def test_contribution_sem_by_hand():
    per_image = {"mse_image": np.zeros((1, 3)), "mse_blank": np.array([[0.0, 1.0, 2.0]]),
                 "loss_blank": np.ones((1, 3))}
    sem = contribution_sem(per_image)
    assert set(sem) == {"mse_blank"}
    np.testing.assert_allclose(sem["mse_blank"], [1.0 / np.sqrt(3)])  # std (ddof 1) = 1
