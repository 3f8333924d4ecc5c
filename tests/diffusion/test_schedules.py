"""Schedules: values against closed forms, validation, config reading, respacing, pytree use."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jdiffseg.diffusion import schedules as sch


def _linear_alpha_bar(t: int, T: int) -> float:
    """ᾱ_t = Π_{i≤t} (1 − β_i), β_i = (1000/T)(1e-4 + i (0.02 − 1e-4) / (T − 1))."""
    scale = 1000.0 / T
    i = np.arange(t + 1, dtype=np.float64)
    b = scale * (1e-4 + i * (0.02 - 1e-4) / (T - 1))
    return float(np.exp(np.sum(np.log1p(-b))))


def _cosine_f(u: float) -> float:
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


@pytest.mark.parametrize(("T", "first", "last"), [(1000, 1e-4, 0.02), (100, 1e-3, 0.2)])
def test_linear_beta_endpoints_follow_the_1000_over_t_rescale(T, first, last):
    s = sch.make_schedule("linear", T)
    assert s.num_timesteps == T
    np.testing.assert_allclose(float(s.betas[0]), first, rtol=1e-6)
    np.testing.assert_allclose(float(s.betas[-1]), last, rtol=1e-6)
    assert np.all(np.diff(np.asarray(s.betas)) > 0)


@pytest.mark.parametrize("T", [1000, 100])
def test_linear_alphas_cumprod_match_the_product_formula(T):
    s = sch.make_schedule("linear", T)
    for t in [0, 1, T // 3, T // 2, T - 2, T - 1]:
        np.testing.assert_allclose(float(s.alphas_cumprod[t]), _linear_alpha_bar(t, T), rtol=2e-5)
    np.testing.assert_allclose(float(s.alphas_cumprod[0]), 1.0 - 1000.0 / T * 1e-4, rtol=1e-7)


def test_linear_final_alpha_bar_at_t1000_is_the_known_ddpm_value():
    s = sch.make_schedule("linear", 1000)
    np.testing.assert_allclose(float(s.alphas_cumprod[-1]), 4.0358e-5, rtol=1e-3)


@pytest.mark.parametrize("T", [1000, 50])
def test_cosine_alphas_cumprod_match_the_closed_form(T):
    s = sch.make_schedule("cosine", T)
    betas = np.asarray(s.betas, dtype=np.float64)
    # Only the last beta reaches the 0.999 clip; before it ᾱ_t = f(t + 1) / f(0).
    assert np.all(betas[:-1] < 0.999)
    np.testing.assert_allclose(betas[-1], 0.999, rtol=1e-6)
    for t in [0, 1, T // 4, T // 2, T - 2]:
        expected = _cosine_f((t + 1) / T) / _cosine_f(0.0)
        np.testing.assert_allclose(float(s.alphas_cumprod[t]), expected, rtol=2e-5)
    np.testing.assert_allclose(
        float(s.alphas_cumprod[-1]), float(s.alphas_cumprod[-2]) * 0.001, rtol=1e-5
    )


def test_derived_quantities_are_consistent():
    s = sch.make_schedule("cosine", 200)
    ac = np.asarray(s.alphas_cumprod, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(s.alphas), 1.0 - np.asarray(s.betas), atol=1e-7)
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod_prev)[1:], ac[:-1], rtol=1e-6)
    assert float(s.alphas_cumprod_prev[0]) == 1.0
    np.testing.assert_allclose(np.asarray(s.log_snr), np.log(ac / (1.0 - ac)), rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(np.asarray(s.log_snr)) < 0)
    np.testing.assert_allclose(np.asarray(s.sqrt_alphas_cumprod) ** 2, ac, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(s.sqrt_one_minus_alphas_cumprod) ** 2, 1.0 - ac, rtol=1e-4, atol=1e-7
    )


def test_custom_betas_and_alphas_cumprod_round_trip():
    betas = np.linspace(1e-3, 0.05, 40)
    from_betas = sch.make_schedule("custom", betas=betas)
    ac = np.cumprod(1.0 - betas)
    from_ac = sch.make_schedule("custom", 40, alphas_cumprod=ac)
    np.testing.assert_allclose(np.asarray(from_betas.alphas_cumprod), ac, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(from_ac.betas), betas, rtol=1e-5)
    np.testing.assert_allclose(sch.betas_from_alphas_cumprod(ac), betas, rtol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"betas": [0.1, 0.0, 0.2]}, r"beta\[1\] = 0.0"),
        ({"betas": [0.1, 1.0]}, r"beta\[1\] = 1.0"),
        ({"betas": [0.1, -0.2, 0.3]}, r"beta\[1\]"),
        ({"betas": [0.1, float("nan")]}, r"beta\[1\] = nan"),
        ({"betas": [[0.1, 0.2]]}, "1-D"),
        ({"betas": [0.1]}, "at least 2"),
        ({"alphas_cumprod": [0.9, 0.95, 0.5]}, r"strictly decreasing; value\[1\]"),
        ({"alphas_cumprod": [0.9, 0.9]}, "strictly decreasing"),
        ({"alphas_cumprod": [1.0, 0.5]}, r"\(0, 1\); value\[0\]"),
        ({"alphas_cumprod": [0.5, 0.0]}, r"value\[1\] = 0.0"),
        ({}, "exactly one of"),
        ({"betas": [0.1, 0.2], "alphas_cumprod": [0.9, 0.8]}, "exactly one of"),
    ],
)
def test_custom_schedule_errors_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sch.make_schedule("custom", **kwargs)


def test_named_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        sch.make_schedule("quadratic", 100)
    with pytest.raises(ValueError, match="num_timesteps=20"):
        sch.make_schedule("linear", 20)  # 1000/T rescale gives beta_end = 1
    with pytest.raises(ValueError, match="has 3 values but num_timesteps is 4"):
        sch.make_schedule("custom", 4, betas=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="takes no betas"):
        sch.make_schedule("linear", 10, betas=[0.1, 0.2])


def _diffusion_config(**overrides):
    cfg = ml_collections.ConfigDict(
        {"num_timesteps": 100, "schedule": "linear", "custom_betas": ()}
    )
    cfg.update(overrides)
    return cfg


def test_from_config_reads_the_diffusion_section():
    linear = sch.from_config(_diffusion_config())
    np.testing.assert_allclose(float(linear.betas[-1]), 0.2, rtol=1e-6)
    cosine = sch.from_config(_diffusion_config(schedule="cosine", num_timesteps=30))
    assert cosine.num_timesteps == 30
    betas = (0.01, 0.02, 0.05)
    custom = sch.from_config(
        _diffusion_config(schedule="custom", num_timesteps=3, custom_betas=betas)
    )
    np.testing.assert_allclose(np.asarray(custom.betas), betas, rtol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"schedule": "sigmoid"}, "config.diffusion.schedule='sigmoid'"),
        ({"schedule": "custom"}, "needs config.diffusion.custom_betas"),
        (
            {"schedule": "custom", "custom_betas": (0.1, 0.2)},
            "custom_betas has 2 values but config.diffusion.num_timesteps is 100",
        ),
        (
            {"schedule": "custom", "num_timesteps": 2, "custom_betas": (0.1, 1.5)},
            r"config.diffusion.custom_betas: .*beta\[1\] = 1.5",
        ),
    ],
)
def test_from_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        sch.from_config(_diffusion_config(**overrides))


def test_schedule_is_a_pytree_usable_under_jit_and_vmap():
    s = sch.make_schedule("linear", 100)
    leaves = jax.tree_util.tree_leaves(s)
    assert all(leaf.dtype in (jnp.float32, jnp.int32) for leaf in leaves)

    @jax.jit
    def last_alpha_bar(schedule):
        return schedule.alphas_cumprod[schedule.num_timesteps - 1]

    np.testing.assert_allclose(last_alpha_bar(s), s.alphas_cumprod[-1])
    stacked = jax.tree_util.tree_map(
        lambda a, b: jnp.stack([a, b]), s, sch.make_schedule("cosine", 100)
    )
    firsts = jax.vmap(lambda q: q.betas[0])(stacked)
    assert firsts.shape == (2,)


def test_space_timesteps_matches_guided_diffusion_semantics():
    assert sch.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert sch.space_timesteps(100, "ddim7") == list(range(0, 100, 15))
    assert sch.space_timesteps(100, "10") == list(range(0, 100, 11))
    assert sch.space_timesteps(100, 10) == list(range(0, 100, 11))
    assert sch.space_timesteps(50, [50]) == list(range(50))
    # Three sections of 100 steps, strided (size − 1)/(count − 1) with rounding.
    kept = sch.space_timesteps(300, "10,15,20")
    assert len(kept) == 45
    assert kept[:10] == [round(j * 11.0) for j in range(10)]
    assert kept[10:25] == [100 + round(j * 99 / 14) for j in range(15)]
    assert kept[25:] == [200 + round(j * 99 / 19) for j in range(20)]
    with pytest.raises(ValueError, match="exactly 51 of 100"):
        sch.space_timesteps(100, "ddim51")
    with pytest.raises(ValueError, match="section of 100 steps into 200"):
        sch.space_timesteps(100, "200")


def test_respace_keeps_alpha_bar_at_kept_steps():
    s = sch.make_schedule("linear", 1000)
    kept = sch.space_timesteps(1000, "ddim25")
    r = sch.respace(s, kept)
    assert r.num_timesteps == 25
    np.testing.assert_array_equal(np.asarray(r.timestep_map), kept)
    np.testing.assert_allclose(
        np.asarray(r.alphas_cumprod), np.asarray(s.alphas_cumprod)[kept], rtol=1e-5
    )
    ac = np.array([_linear_alpha_bar(t, 1000) for t in kept])
    expected_betas = 1.0 - ac / np.concatenate([[1.0], ac[:-1]])
    np.testing.assert_allclose(np.asarray(r.betas), expected_betas, rtol=1e-4)
    # Posterior quantities follow the new betas.
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    np.testing.assert_allclose(
        np.asarray(r.posterior_variance), expected_betas * (1 - ac_prev) / (1 - ac), rtol=1e-4
    )


def test_respace_of_a_respaced_schedule_composes_the_maps():
    s = sch.make_schedule("cosine", 100)
    once = sch.respace(s, range(0, 100, 2))
    twice = sch.respace(once, [0, 5, 10, 49])
    np.testing.assert_array_equal(np.asarray(twice.timestep_map), [0, 10, 20, 98])
    np.testing.assert_allclose(
        np.asarray(twice.alphas_cumprod), np.asarray(s.alphas_cumprod)[[0, 10, 20, 98]], rtol=1e-5
    )


def test_respace_rejects_bad_steps():
    s = sch.make_schedule("linear", 100)
    with pytest.raises(ValueError, match="at least 2 distinct steps"):
        sch.respace(s, [100, 3])
    with pytest.raises(ValueError, match="at least 2 distinct steps"):
        sch.respace(s, [7])


def test_scale_timesteps_maps_to_the_1000_step_range():
    t = jnp.array([0, 50, 99], dtype=jnp.int32)
    np.testing.assert_allclose(sch.scale_timesteps(t, 100), [0.0, 500.0, 990.0])
