"""DPM-Solver++ (Lu et al. 2022): multistep solvers of the probability-flow ODE in data-prediction
form, for few-step deterministic sampling from a model trained on the discrete chain.

With λ = log(α/σ) (α = √ᾱ, σ = √(1 − ᾱ)), the ODE's exact solution from λ_s to λ_t is
x_t = (σ_t/σ_s) x_s + σ_t ∫ e^λ x̂0(λ) dλ. A k-th order multistep solver integrates, exactly,
the polynomial through the last k data predictions x̂0 (clipped where the run clips), so each
step is a fixed linear combination of x and those predictions: its coefficients are computed
once, in float64 NumPy, when the time grid is built, and the chain is one `lax.scan`.

The grid holds `steps` distinct timesteps of the (discrete) schedule, from T−1 down to 0, where
the model is evaluated once each (`steps` network evaluations per sample). The last step goes
from timestep 0 to σ = 0 and is always first order, which makes the sample exactly the data
prediction at timestep 0: a clean x0 inside the clip range, never a half-denoised mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdiffseg.diffusion import gaussian
from jdiffseg.diffusion.schedules import Schedule, concrete_alphas_cumprod

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
SOLVERS = {"dpmpp_2m": 2, "dpmpp_3m": 3}
SPACINGS = ("logsnr", "time_uniform", "time_quadratic")
MAX_ORDER = 3


def solver_timesteps(s: Schedule, steps: int, spacing: str = "logsnr") -> np.ndarray:
    """`steps` distinct timestep indices of `s`, decreasing from T−1 to 0.

    'logsnr': uniform in λ; 'time_uniform': uniform in t; 'time_quadratic': uniform in √(t+1)
    (denser near the data). Values are rounded to the schedule's integer timesteps; where
    rounding makes two equal, the noisier one moves up to the next free timestep.
    """
    T = s.num_timesteps
    if spacing not in SPACINGS:
        raise ValueError(f"unknown DPM-Solver spacing {spacing!r}; expected one of {SPACINGS}")
    if not 1 <= steps <= T:
        raise ValueError(f"DPM-Solver steps must lie in [1, {T}] for this schedule, got {steps}")
    if spacing == "time_uniform":
        raw = np.linspace(T - 1, 0, steps)
    elif spacing == "time_quadratic":
        raw = np.linspace(np.sqrt(T), 1.0, steps) ** 2 - 1.0
    else:
        lam = _half_log_snr(concrete_alphas_cumprod(s, "solver_timesteps"))
        targets = np.linspace(lam[-1], lam[0], steps)
        raw = np.interp(targets, lam[::-1], np.arange(T - 1, -1, -1, dtype=np.float64))
    position = np.arange(steps)
    t = np.clip(np.rint(raw).astype(np.int64), steps - 1 - position, T - 1 - position)
    for i in range(steps - 2, -1, -1):
        t[i] = max(t[i], t[i + 1] + 1)
    return t


def solver_coefficients(
    s: Schedule, timesteps: Sequence[int] | np.ndarray, order: int, lower_order_final: bool = True
) -> np.ndarray:
    """(steps, 4) float64 rows [a, c0, c1, c2]: step i maps x to a·x + c0·d_i + c1·d_{i−1} +
    c2·d_{i−2}, d_j the data prediction at `timesteps[j]`; the last step lands on σ = 0.

    Step i has order min(order, i + 1) (the history warms up) and, with `lower_order_final`,
    at most steps − i (the last steps, where few-step grids are coarsest, drop order).
    """
    if order not in range(1, MAX_ORDER + 1):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    ac = concrete_alphas_cumprod(s, "solver_coefficients")[np.asarray(timesteps)]
    alpha = np.append(np.sqrt(ac), 1.0)
    sigma = np.append(np.sqrt(1.0 - ac), 0.0)
    lam = np.append(_half_log_snr(ac), np.inf)
    steps = len(ac)
    rows = np.zeros((steps, MAX_ORDER + 1))
    for i in range(steps):
        k = min(order, i + 1, steps - i if lower_order_final else order)
        k = 1 if i == steps - 1 else k  # the step onto σ = 0 is first order: x = d_i
        h = lam[i + 1] - lam[i]
        rows[i, 0] = sigma[i + 1] / sigma[i]
        rows[i, 1:] = alpha[i + 1] * _step_weights(h, np.diff(lam[i - k + 1 : i + 1])[::-1])
    return rows


def dpm_solver_sample(
    model_fn: ModelFn,
    s: Schedule,
    shape: Sequence[int],
    key: jax.Array,
    *,
    order: int = 2,
    steps: int | None = None,
    spacing: str = "logsnr",
    lower_order_final: bool = True,
    prediction: str = "eps",
    variance: str = "fixed_large",
    clip_x0: bool = False,
    clip_range: tuple[float, float] = (-1.0, 1.0),
    return_trajectory: bool = False,
    noise: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """DPM-Solver++(order M) from x_T ~ N(0, I) to a clean x0, in `steps` model evaluations.

    `steps` None: every timestep of `s`. `s` must be concrete (build the grid outside jit or
    close over the schedule). x_T is drawn from `key` exactly as `ddim_sample` draws it, so
    the same key starts both from the same noise; `noise` overrides it. A 'learned_range'
    model is read through its mean channels only. With `return_trajectory`, also returns
    {'x': the state after each step, 'pred_x0', 't': the model timestep}, first step first.
    Other arguments as `ddim_sample`.
    """
    t_grid = solver_timesteps(s, s.num_timesteps if steps is None else int(steps), spacing)
    coefficients = solver_coefficients(s, t_grid, order, lower_order_final)
    shape = tuple(shape)
    x = gaussian.standard_normal(jax.random.split(key)[0], shape) if noise is None else noise
    if x.shape != shape:
        raise ValueError(f"noise has shape {x.shape} but the sample shape is {shape}")
    x = x.astype(jnp.float32)
    options = dict(prediction=prediction, variance=variance, clip_x0=clip_x0, clip_range=clip_range)

    def body(
        carry: tuple[jax.Array, jax.Array, jax.Array], inputs: tuple[jax.Array, jax.Array]
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], dict[str, jax.Array] | None]:
        x, d1, d2 = carry
        i, c = inputs
        t = jnp.full((shape[0],), i, dtype=jnp.int32)
        model_out = model_fn(x, s.timestep_map[t]).astype(jnp.float32)
        d0 = gaussian.p_mean_variance(s, model_out, x, t, **options)["pred_x0"]
        x_next = c[0] * x + c[1] * d0 + c[2] * d1 + c[3] * d2
        if not return_trajectory:
            return (x_next, d0, d1), None
        return (x_next, d0, d1), {"x": x_next, "pred_x0": d0, "t": s.timestep_map[i]}

    inputs = (jnp.asarray(t_grid, jnp.int32), jnp.asarray(coefficients, jnp.float32))
    zeros = jnp.zeros_like(x)
    (x, _, _), trajectory = jax.lax.scan(body, (x, zeros, zeros), inputs)
    if return_trajectory:
        return x, trajectory
    return x


def _half_log_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """λ = log(α/σ) = ½ log(ᾱ / (1 − ᾱ))."""
    return 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))


def _step_weights(h: float, gaps: np.ndarray) -> np.ndarray:
    """Weights of the data predictions d_i, d_{i−1}, d_{i−2} (times α_next) in one step of
    λ-length h; `gaps` (len = order − 1) are the λ-lengths of the previous steps, newest first.

    Order 2 is the paper's DPM-Solver++(2M) update. Order 3 integrates the quadratic through
    the three predictions exactly; the reference code's 3M weights its second difference by
    half as much, which leaves an O(h³) local error (second order overall).
    """
    phi1 = np.expm1(-h)
    m0, m1, m2 = np.eye(MAX_ORDER)
    if len(gaps) == 0:
        return -phi1 * m0
    r0 = gaps[0] / h
    d1_0 = (m0 - m1) / r0
    if len(gaps) == 1:
        return -phi1 * m0 - 0.5 * phi1 * d1_0
    r1 = gaps[1] / h
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    return -phi1 * m0 + phi2 * d1 - 2.0 * phi3 * d2
