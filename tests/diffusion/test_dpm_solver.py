"""DPM-Solver++ against closed forms: Gaussian data, whose exact denoisers and probability-flow
ODE solution are known, DDIM (η = 0), and exact integrals of polynomials."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.diffusion import dpm_solver as dpm
from jdiffseg.diffusion import gaussian as g
from jdiffseg.diffusion import samplers as smp
from jdiffseg.diffusion.schedules import concrete_alphas_cumprod, make_schedule, respace

MU, SD = 0.3, 0.5  # the data: x0 ~ N(MU, SD²) in every coordinate
SHAPE = (64, 1)


@pytest.fixture(scope="module")
def s():
    return make_schedule("linear", 1000)


@pytest.fixture(scope="module")
def x_start():
    """x_T, the solvers' starting noise."""
    return jnp.asarray(np.random.default_rng(0).normal(size=SHAPE), jnp.float32)


def _gaussian_model(s, prediction):
    """The exact E[ε | x_t], E[x0 | x_t] or E[v | x_t] for N(MU, SD²) data."""
    ac = jnp.asarray(concrete_alphas_cumprod(s, "test"), jnp.float32)

    def model_fn(x, t):
        a, sg = (g.broadcast_like(v, x) for v in (jnp.sqrt(ac[t]), jnp.sqrt(1.0 - ac[t])))
        z = (x - a * MU) / (a**2 * SD**2 + sg**2)
        eps, x0 = sg * z, MU + a * SD**2 * z
        return {"eps": eps, "x0": x0, "v": a * eps - sg * x0}[prediction]

    return model_fn


def _exact_endpoint(s, x_start):
    """The ODE solution from x_T = x_start to timestep 0, x_0 = α₀μ + std₀(x_T − α_Tμ)/std_T with
    std² = α²s² + σ² (the flow is the monotone map between the Gaussian marginals), then
    denoised: what a solver's output converges to."""
    ac = concrete_alphas_cumprod(s, "test")
    a, std = np.sqrt(ac), np.sqrt(ac * SD**2 + 1.0 - ac)
    x_0 = a[0] * MU + std[0] * (np.asarray(x_start, np.float64) - a[-1] * MU) / std[-1]
    return MU + a[0] * SD**2 * (x_0 - a[0] * MU) / std[0] ** 2


def _error(s, x_start, order, steps, spacing="logsnr"):
    out = dpm.dpm_solver_sample(
        _gaussian_model(s, "eps"), s, SHAPE, jax.random.key(0),
        order=order, steps=steps, spacing=spacing, noise=x_start,
    )  # fmt: skip
    return float(np.abs(np.asarray(out, np.float64) - _exact_endpoint(s, x_start)).max())


def test_convergence_orders_on_a_fine_schedule(x_start):
    """Log-log slope of the error against steps: ≈ 2 for 2M, ≈ 3 or steeper for 3M.

    The fine 10⁴-step schedule is the continuous VP process for grids of ≤ 80 steps, and
    log-SNR spacing makes every step the same length in λ."""
    fine = make_schedule("linear", 10_000)
    steps = np.array([20, 40, 80])
    slopes = {}
    for order in (2, 3):
        errors = [_error(fine, x_start, order, n) for n in steps]
        assert np.all(np.diff(errors) < 0), (order, errors)
        slopes[order] = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 1.7 < slopes[2] < 2.4, slopes
    assert slopes[3] > 2.7 and slopes[3] > slopes[2] + 0.8, slopes


@pytest.mark.parametrize("spacing", dpm.SPACINGS)
def test_every_spacing_reaches_the_exact_endpoint(s, x_start, spacing):
    errors = [_error(s, x_start, 3, n, spacing) for n in (10, 40, 250)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 3e-4, errors


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_x0_and_v_models_give_the_eps_model_s_samples(s, x_start, prediction):
    run = lambda p: dpm.dpm_solver_sample(  # noqa: E731
        _gaussian_model(s, p), s, SHAPE, jax.random.key(0),
        order=3, steps=12, prediction=p, noise=x_start,
    )  # fmt: skip
    np.testing.assert_allclose(run(prediction), run("eps"), atol=2e-4)


def test_learned_range_models_sample_through_their_mean_channels(s, x_start):
    base = _gaussian_model(s, "eps")

    def learned(x, t):  # variance channels must not matter
        return jnp.concatenate([base(x, t), jnp.full_like(x, 0.7)], axis=-1)

    kw = dict(order=2, steps=8, noise=x_start)
    np.testing.assert_array_equal(
        dpm.dpm_solver_sample(learned, s, SHAPE, jax.random.key(0), variance="learned_range", **kw),
        dpm.dpm_solver_sample(base, s, SHAPE, jax.random.key(0), **kw),
    )


@pytest.mark.parametrize("spacing", dpm.SPACINGS)
def test_first_order_equals_ddim_eta0_on_the_same_timesteps(s, spacing):
    def model_fn(x, t):  # any model: the identity holds step by step
        return jnp.tanh(x) + 1e-3 * g.broadcast_like(t.astype(jnp.float32), x)

    shape, key = (3, 4, 4, 1), jax.random.key(1)
    grid = dpm.solver_timesteps(s, 7, spacing)
    solver = dpm.dpm_solver_sample(model_fn, s, shape, key, order=1, steps=7, spacing=spacing)
    ddim = smp.ddim_sample(model_fn, respace(s, grid), shape, key, eta=0.0)
    np.testing.assert_allclose(solver, ddim, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("order", "encoding_range"), [(2, (0.0, 1.0)), (3, (-1.0, 1.0))])
def test_the_last_step_lands_on_a_clean_clipped_mask(s, order, encoding_range):
    """MedSegDiff's solver left masks far outside [0, 1] after its last step; here the sample is
    the clipped data prediction of the last model evaluation, for any steps and order."""
    low, high = encoding_range
    mask = jnp.where(jnp.arange(16).reshape(1, 4, 4, 1) % 3 == 0, high, low)
    mask = jnp.broadcast_to(mask, (2, 4, 4, 1))

    def overshooting(x, t):  # an imperfect x0 model that overshoots both labels
        return 1.6 * mask - 0.3 * (high + low) + 0.1 * jnp.sin(3.0 * x)

    for steps, lower_order_final in ((2, True), (5, True), (5, False)):
        out, traj = dpm.dpm_solver_sample(
            overshooting, s, mask.shape, jax.random.key(2), order=order, steps=steps,
            prediction="x0", clip_x0=True, clip_range=(low, high),
            lower_order_final=lower_order_final, return_trajectory=True,
        )  # fmt: skip
        np.testing.assert_array_equal(out, traj["pred_x0"][-1])
        np.testing.assert_allclose(out, mask, atol=1e-6)

    def eps_oracle(x, t):  # the exact ε of this mask: every step is exact
        ac = g.extract(s.alphas_cumprod, t, x)
        return (x - jnp.sqrt(ac) * mask) / jnp.sqrt(1.0 - ac)

    out = dpm.dpm_solver_sample(eps_oracle, s, mask.shape, jax.random.key(3), order=order, steps=5)
    np.testing.assert_allclose(out, mask, atol=1e-4)


def test_coefficients_integrate_polynomials_exactly_and_drop_order_at_the_end(s):
    grid = dpm.solver_timesteps(s, 6, "time_quadratic")
    rows = dpm.solver_coefficients(s, grid, 3, lower_order_final=True)
    ac = concrete_alphas_cumprod(s, "test")[grid]
    lam = 0.5 * np.log(ac / (1.0 - ac))
    alpha_next = np.sqrt(ac[1:])
    for i in (2, 3):  # third-order steps: ∫_0^h e^{u−h} u^n du for n = 0, 1, 2
        h, u = lam[i + 1] - lam[i], lam[i - 2 : i + 1][::-1] - lam[i]
        e = np.exp(-h)
        exact = [1 - e, h - 1 + e, h**2 - 2 * h + 2 * (1 - e)]
        for n in range(3):
            np.testing.assert_allclose(rows[i, 1:] @ u**n, alpha_next[i] * exact[n], rtol=1e-9)
        np.testing.assert_allclose(rows[i, 0], np.sqrt((1 - ac[i + 1]) / (1 - ac[i])))
    orders = [np.count_nonzero(r[1:]) for r in rows]
    assert orders == [1, 2, 3, 3, 2, 1]
    unlowered = dpm.solver_coefficients(s, grid, 3, lower_order_final=False)
    assert [np.count_nonzero(r[1:]) for r in unlowered] == [1, 2, 3, 3, 3, 1]
    np.testing.assert_array_equal(rows[-1], [0.0, 1.0, 0.0, 0.0])  # lands on d at timestep 0


@pytest.mark.parametrize("spacing", dpm.SPACINGS)
def test_timesteps_are_distinct_decreasing_and_span_the_chain(s, spacing):
    for steps in (1, 2, 10, 300, 1000):
        t = dpm.solver_timesteps(s, steps, spacing)
        assert len(t) == steps and t[0] == 999 and (steps == 1 or t[-1] == 0)
        assert np.all(np.diff(t) < 0)
    if spacing == "logsnr":  # each timestep is within one step of its uniform-λ target
        ac = concrete_alphas_cumprod(s, "test")
        lam = np.concatenate([[np.inf], 0.5 * np.log(ac / (1.0 - ac)), [-np.inf]])
        t = dpm.solver_timesteps(s, 20, spacing)
        targets = np.linspace(lam[-2], lam[1], 20)
        assert np.all((lam[t + 2] <= targets) & (targets <= lam[t]))


def test_ensemble_sample_runs_the_solvers_jitted_over_any_batch(s):
    images = jnp.arange(3, dtype=jnp.float32)[:, None, None, None] * jnp.ones((3, 4, 4, 1)) / 2

    @jax.jit
    def run(cond, key):
        return smp.ensemble_sample(
            lambda x, t, c: c, s, cond, 2, key, sample_shape=(4, 4, 1),
            sampler="dpmpp_3m", steps=6, prediction="x0", return_trajectory=True,
        )  # fmt: skip

    samples, traj = run(images, jax.random.key(4))
    np.testing.assert_allclose(samples, np.broadcast_to(images[:, None], samples.shape), atol=1e-5)
    assert traj["x"].shape == (6, 3, 2, 4, 4, 1)
    np.testing.assert_array_equal(traj["t"], dpm.solver_timesteps(s, 6, "logsnr"))


def test_a_respaced_schedule_calls_the_model_with_original_timesteps(s):
    r = respace(s, [5, 20, 35, 49, 400, 999])
    seen = []

    def model_fn(x, t):
        jax.debug.callback(lambda v: seen.append(int(v[0])), t)
        return jnp.zeros_like(x)

    dpm.dpm_solver_sample(model_fn, r, (1, 2), jax.random.key(0), spacing="time_uniform")
    jax.effects_barrier()
    assert seen == [999, 400, 49, 35, 20, 5]


def test_bad_options_are_clear_errors(s):
    run = lambda **kw: dpm.dpm_solver_sample(  # noqa: E731
        lambda x, t: x, s, (1, 2), jax.random.key(0), **kw
    )
    with pytest.raises(ValueError, match="unknown DPM-Solver spacing 'karras'"):
        run(spacing="karras")
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 1000\].*got 1001"):
        run(steps=1001)
    with pytest.raises(ValueError, match="order must be 1, 2 or 3, got 4"):
        run(order=4)
    with pytest.raises(ValueError, match="noise has shape"):
        run(noise=jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        run(prediction="score")
    with pytest.raises(ValueError, match=r"solver_timesteps needs a concrete schedule"):
        jax.jit(lambda q: dpm.dpm_solver_sample(lambda x, t: x, q, (1, 2), jax.random.key(0)))(s)
