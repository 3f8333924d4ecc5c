"""Fusion of ensemble members into one mask, and per-pixel uncertainty of the ensemble.

Members are foreground probabilities or binary masks of shape ``(B, n, H, W, 1)`` (any number of
pixel axes after the member axis works). Fused outputs drop the member axis: ``(B, H, W, 1)``.
Member binarisation uses ``member > threshold`` (strict), as in :mod:`jdiffseg.scoring.metrics`.

Methods:

* ``'mean'``: average the members, foreground where the mean exceeds the threshold
  (EnsemDiff's fusion; SegDiff's "mean then round" is the same with threshold 0.5).
* ``'majority'``: binarise each member, foreground where strictly more than half vote for it
  (an even split goes to background).
* ``'staple'``: Simultaneous Truth And Performance Level Estimation (Warfield, Zou and Wells,
  IEEE TMI 2004), an expectation-maximisation over the hidden true mask and each member's
  sensitivity and specificity, run independently per image.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

FUSION_METHODS = ("mean", "majority", "staple")
_PARAM_EPS = 1e-6


def _check_members(members: jax.Array) -> jax.Array:
    if members.ndim < 3:
        raise ValueError(
            f"fusion: members must have shape (B, n, H, W, 1) (at least 3 axes), got "
            f"{tuple(members.shape)}"
        )
    return jnp.asarray(members, jnp.float32)


def ensemble_mean(members: jax.Array) -> jax.Array:
    """Mean member probability per pixel, (B, H, W, 1): the ensemble's predictive probability."""
    return jnp.mean(_check_members(members), axis=1)


def mean_threshold(members: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Fused {0, 1} mask where the member mean exceeds ``threshold``."""
    return (ensemble_mean(members) > threshold).astype(jnp.float32)


def vote_fraction(members: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Fraction of members whose binarised mask is foreground at each pixel, (B, H, W, 1)."""
    votes = (_check_members(members) > threshold).astype(jnp.float32)
    return jnp.mean(votes, axis=1)


def majority_vote(members: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Fused {0, 1} mask: foreground where strictly more than half of the members say so."""
    return (vote_fraction(members, threshold) > 0.5).astype(jnp.float32)


class StapleResult(NamedTuple):
    """STAPLE output: posterior P(truth = 1) per pixel and each member's estimated performance."""

    probs: jax.Array  # (B, H, W, 1) posterior probability of foreground
    mask: jax.Array  # (B, H, W, 1) probs > 0.5 as {0, 1}
    sensitivity: jax.Array  # (B, n)
    specificity: jax.Array  # (B, n)
    prior: jax.Array  # (B,) foreground prior used (final estimate with estimate_prior)
    iterations: jax.Array  # (B,) int32 EM iterations run


def _staple_posterior(
    decisions: jax.Array, sens: jax.Array, spec: jax.Array, log_prior_odds: jax.Array
) -> jax.Array:
    """E-step: P(T_i = 1 | D_i) for decisions (P, n) given per-member sensitivity/specificity."""
    log_p, log_1mp = jnp.log(sens), jnp.log1p(-sens)
    log_q, log_1mq = jnp.log(spec), jnp.log1p(-spec)
    # log P(D | T=1) - log P(D | T=0), summed over members (members independent given T).
    per_one = log_p - log_1mq  # member says 1
    per_zero = log_1mp - log_q  # member says 0
    logit = log_prior_odds + decisions @ per_one + (1.0 - decisions) @ per_zero
    return jax.nn.sigmoid(logit)


def _staple_m_step(
    decisions: jax.Array, w: jax.Array, sens: jax.Array, spec: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """M-step: closed-form sensitivity and specificity; a member keeps its old value where the
    posterior has no (fore|back)ground mass to estimate it from."""
    fg = jnp.sum(w)
    bg = jnp.sum(1.0 - w)
    new_sens = jnp.where(fg > 0, (w @ decisions) / jnp.maximum(fg, 1e-30), sens)
    new_spec = jnp.where(bg > 0, ((1.0 - w) @ (1.0 - decisions)) / jnp.maximum(bg, 1e-30), spec)
    clip = functools.partial(jnp.clip, min=_PARAM_EPS, max=1.0 - _PARAM_EPS)
    return clip(new_sens), clip(new_spec)


def _staple_single(
    decisions: jax.Array,
    prior: jax.Array,
    init_sensitivity: float,
    init_specificity: float,
    max_iters: int,
    tol: float,
    estimate_prior: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """STAPLE EM for one image; decisions (P, n) in {0, 1}."""
    n = decisions.shape[1]
    clip = functools.partial(jnp.clip, min=_PARAM_EPS, max=1.0 - _PARAM_EPS)
    sens0 = jnp.full((n,), init_sensitivity, jnp.float32)
    spec0 = jnp.full((n,), init_specificity, jnp.float32)

    def log_odds(f: jax.Array) -> jax.Array:
        f = clip(f)
        return jnp.log(f) - jnp.log1p(-f)

    def cond(carry: tuple) -> jax.Array:
        it, *_, delta = carry
        return (it < max_iters) & (delta > tol)

    def body(carry: tuple) -> tuple:
        it, sens, spec, f, _ = carry
        w = _staple_posterior(decisions, sens, spec, log_odds(f))
        new_sens, new_spec = _staple_m_step(decisions, w, sens, spec)
        new_f = jnp.mean(w) if estimate_prior else f
        delta = jnp.maximum(jnp.max(jnp.abs(new_sens - sens)), jnp.max(jnp.abs(new_spec - spec)))
        delta = jnp.maximum(delta, jnp.abs(new_f - f))
        return it + 1, new_sens, new_spec, new_f, delta

    init = (jnp.int32(0), sens0, spec0, prior, jnp.float32(jnp.inf))
    iters, sens, spec, prior, _ = jax.lax.while_loop(cond, body, init)
    w = _staple_posterior(decisions, sens, spec, log_odds(prior))
    return w, sens, spec, prior, iters


@functools.partial(jax.jit, static_argnames=("max_iters", "estimate_prior"))
def staple(
    members: jax.Array,
    *,
    threshold: float = 0.5,
    prior: float | jax.Array | None = None,
    estimate_prior: bool = False,
    init_sensitivity: float = 0.99,
    init_specificity: float = 0.99,
    max_iters: int = 100,
    tol: float = 1e-5,
) -> StapleResult:
    """STAPLE fusion of binarised members, per image.

    ``prior`` is the foreground prior P(T = 1); ``None`` uses each image's mean member decision
    (Warfield et al.'s global prior). By default the prior stays fixed, as in the paper;
    ``estimate_prior=True`` also re-estimates it in each M-step as the mean posterior, which
    helps when a few unreliable members inflate the mean decision. EM stops after ``max_iters``
    iterations or when no estimate changes by more than ``tol``; ``tol=0`` runs to
    ``max_iters`` unless the estimates stop changing exactly.
    """
    members = _check_members(members)
    batch, n = members.shape[:2]
    pixel_shape = members.shape[2:]
    decisions = (members > threshold).astype(jnp.float32)
    decisions = jnp.moveaxis(decisions.reshape(batch, n, -1), 1, 2)  # (B, P, n)
    if prior is None:
        prior_b = jnp.mean(decisions, axis=(1, 2))
    else:
        prior_b = jnp.broadcast_to(jnp.asarray(prior, jnp.float32), (batch,))
    run = functools.partial(
        _staple_single,
        init_sensitivity=init_sensitivity,
        init_specificity=init_specificity,
        max_iters=max_iters,
        tol=tol,
        estimate_prior=estimate_prior,
    )
    w, sens, spec, prior_b, iters = jax.vmap(run)(decisions, prior_b)
    probs = w.reshape((batch, *pixel_shape))
    return StapleResult(
        probs=probs,
        mask=(probs > 0.5).astype(jnp.float32),
        sensitivity=sens,
        specificity=spec,
        prior=prior_b,
        iterations=iters,
    )


class Fused(NamedTuple):
    """A fused mask and the method's soft consensus it was thresholded from."""

    probs: jax.Array  # (B, H, W, 1): member mean, vote fraction or STAPLE posterior
    mask: jax.Array  # (B, H, W, 1) in {0, 1}


def fuse(members: jax.Array, method: str = "mean", *, threshold: float = 0.5) -> Fused:
    """Fuse members with ``method`` in :data:`FUSION_METHODS`.

    For calibration metrics use :func:`ensemble_mean` (the ensemble's predictive probability);
    ``Fused.probs`` is the consensus specific to the method.
    """
    if method == "mean":
        probs = ensemble_mean(members)
        return Fused(probs, (probs > threshold).astype(jnp.float32))
    if method == "majority":
        probs = vote_fraction(members, threshold)
        return Fused(probs, (probs > 0.5).astype(jnp.float32))
    if method == "staple":
        result = staple(members, threshold=threshold)
        return Fused(result.probs, result.mask)
    raise ValueError(f"fusion: unknown method {method!r}; expected one of {FUSION_METHODS}")


def _binary_entropy_bits(p: jax.Array) -> jax.Array:
    """H(p) in bits with 0 log 0 = 0; in [0, 1]."""
    p = jnp.clip(p, 0.0, 1.0)
    safe = jnp.clip(p, 1e-12, 1.0 - 1e-12)
    h = -(p * jnp.log2(safe) + (1.0 - p) * jnp.log2(1.0 - safe))
    return jnp.where((p <= 0.0) | (p >= 1.0), 0.0, h)


def ensemble_variance(members: jax.Array) -> jax.Array:
    """Per-pixel variance of the member probabilities over the members (ddof=0), (B, H, W, 1)."""
    return jnp.var(_check_members(members), axis=1)


def predictive_entropy(members: jax.Array) -> jax.Array:
    """Binary entropy (bits, in [0, 1]) of the ensemble mean per pixel, (B, H, W, 1)."""
    return _binary_entropy_bits(ensemble_mean(members))


def mutual_information(members: jax.Array) -> jax.Array:
    """Epistemic part of the predictive entropy: H(mean) - mean H(member), in bits, >= 0.

    For binary members it equals the predictive entropy (each member's own entropy is 0).
    """
    members = _check_members(members)
    expected = jnp.mean(_binary_entropy_bits(members), axis=1)
    return jnp.maximum(predictive_entropy(members) - expected, 0.0)


def uncertainty_maps(members: jax.Array) -> dict[str, jax.Array]:
    """Per-pixel ``variance``, ``entropy`` and ``mutual_information`` maps, each (B, H, W, 1)."""
    return {
        "variance": ensemble_variance(members),
        "entropy": predictive_entropy(members),
        "mutual_information": mutual_information(members),
    }
