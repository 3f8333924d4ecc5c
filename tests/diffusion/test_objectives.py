"""Per-mode losses against closed forms, with stand-in networks of known output."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg import diffusion
from jdiffseg.config import schema
from jdiffseg.diffusion import objectives, timesteps

B, H, W = 3, 8, 8


class Constant(nn.Module):
    """Outputs `value` (+ 0 × a parameter) everywhere; records nothing, has one parameter."""

    channels: int
    value: float = 0.0
    cal: float | None = None
    echo_t: bool = False

    @nn.compact
    def __call__(self, x_t, t, image=None, *, train=False):
        scale = self.param("scale", nn.initializers.zeros, ())
        base = jnp.full((*x_t.shape[:3], self.channels), self.value) + scale
        if self.echo_t:
            base = base + jnp.asarray(t, jnp.float32)[:, None, None, None]
        out = {"out": base}
        if self.cal is not None:
            out["cal"] = jnp.full((*x_t.shape[:3], 1), self.cal)
        return out


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.uniform(-1, 1, (B, H, W, 3)), jnp.float32),
        "mask": jnp.asarray(rng.uniform(size=(B, H, W, 1)) > 0.6, jnp.float32),
    }


def _setup(mode="diffusion", **diff):
    c = schema.base_config()
    c.model.mode = mode
    c.diffusion.num_timesteps = 50
    c.diffusion.update(diff)
    obj = objectives.from_config(c)
    return c, obj, diffusion.from_config(c.diffusion), timesteps.from_config(c.diffusion)


def _run(model, obj, schedule, sampler, batch, key):
    loss_fn = objectives.make_loss_fn(obj, model, schedule, sampler)
    params = {"scale": jnp.zeros(())}
    return loss_fn(params, {}, batch, key, timesteps.init_state(sampler))


def _noise(key, shape):
    _, noise_key, _ = jax.random.split(key, 3)
    return np.asarray(jax.random.normal(noise_key, shape))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_diffusion_eps_mse_of_a_zero_network_is_the_noise_energy(reduction):
    _, obj, s, sampler = _setup(loss_reduction=reduction)
    key, batch = jax.random.key(0), _batch()
    loss, aux = _run(Constant(1), obj, s, sampler, batch, key)
    sq = _noise(key, (B, H, W, 1)) ** 2
    per = sq.mean(axis=(1, 2, 3)) if reduction == "mean" else sq.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(aux["per_example"], per, rtol=1e-5)
    np.testing.assert_allclose(loss, per.mean(), rtol=1e-5)
    assert aux["t"].shape == (B,)


def test_x0_prediction_target_is_the_encoded_mask():
    _, obj, s, sampler = _setup(prediction="x0", mask_encoding="plus_minus_one")
    batch = _batch()
    _, aux = _run(Constant(1), obj, s, sampler, batch, jax.random.key(1))
    x0 = 2 * np.asarray(batch["mask"]) - 1  # zero prediction vs x0 in {-1, 1}: error 1 everywhere
    np.testing.assert_allclose(aux["per_example"], (x0**2).mean(axis=(1, 2, 3)), rtol=1e-6)


def test_learned_range_adds_the_vb_term():
    _, obj, s, sampler = _setup(variance="learned_range", use_vb=True)
    _, aux = _run(Constant(2), obj, s, sampler, _batch(), jax.random.key(2))
    assert float(aux["metrics"]["vb"]) > 0
    np.testing.assert_allclose(aux["metrics"]["loss"], aux["metrics"]["mse"] + aux["metrics"]["vb"],
                               rtol=1e-5)


def test_feedforward_is_dice_plus_bce_at_fixed_t():
    c, _, s, sampler = _setup("feedforward")
    c.train.feedforward_t = 3
    obj = objectives.from_config(c)
    batch, logit = _batch(), 0.4
    loss, aux = _run(Constant(1, value=logit), obj, s, sampler, batch, jax.random.key(3))
    m = np.asarray(batch["mask"]).reshape(B, -1)
    p = 1 / (1 + np.exp(-logit))
    bce = -(m * np.log(p) + (1 - m) * np.log(1 - p)).mean(axis=1)
    dice = 1 - (2 * p * m.sum(1) + 1) / (p * m.shape[1] + m.sum(1) + 1)
    np.testing.assert_allclose(aux["per_example"], bce + dice, rtol=1e-5)
    np.testing.assert_allclose(loss, (bce + dice).mean(), rtol=1e-5)
    np.testing.assert_array_equal(aux["t"], 3)


def test_rescaled_timesteps_reach_the_network():
    c, *_ = _setup("feedforward", rescale_timesteps=True)
    c.train.feedforward_t = 3
    obj = objectives.from_config(c)
    model = Constant(1, echo_t=True)
    out = model.apply({"params": {"scale": jnp.zeros(())}}, jnp.zeros((1, 2, 2, 1)),
                      objectives.model_timesteps(obj, jnp.array([3])))
    np.testing.assert_allclose(out["out"], 60.0)  # 3 * 1000 / T with T = 50


def test_mask_only_is_x0_mse_without_the_image():
    _, obj, s, sampler = _setup("mask_only", prediction="x0")
    batch = _batch()

    class NoImage(Constant):
        def __call__(self, x_t, t, image=None, *, train=False):
            assert image is None
            return super().__call__(x_t, t, image, train=train)

    _, aux = _run(NoImage(1), obj, s, sampler, batch, jax.random.key(4))
    np.testing.assert_allclose(aux["per_example"], np.asarray(batch["mask"]).mean(axis=(1, 2, 3)),
                               rtol=1e-6)
    assert "x0_mse" in aux["metrics"]


def test_image_generation_noises_the_image():
    _, obj, s, sampler = _setup("image_generation")
    key = jax.random.key(5)
    _, aux = _run(Constant(3), obj, s, sampler, _batch(), key)
    np.testing.assert_allclose(aux["per_example"],
                               (_noise(key, (B, H, W, 3)) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)


def test_calibration_head_adds_weighted_mse():
    c, _, s, sampler = _setup()
    c.train.cal_loss_weight = 10.0
    obj = objectives.from_config(c)
    batch, key = _batch(), jax.random.key(6)
    loss, aux = _run(Constant(1, cal=0.5), obj, s, sampler, batch, key)
    base = float(np.mean(aux["per_example"]))
    np.testing.assert_allclose(aux["metrics"]["cal_loss"], 0.25, rtol=1e-6)
    np.testing.assert_allclose(loss, base + 10 * 0.25, rtol=1e-5)


def test_importance_weights_scale_the_loss():
    _, obj, s, sampler = _setup(timestep_sampling="importance")
    state = timesteps.init_state(sampler)
    history = jnp.ones_like(state.history).at[0].set(100.0)
    state = timesteps.TimestepState(history, jnp.full_like(state.counts, timesteps.HISTORY))
    loss_fn = objectives.make_loss_fn(obj, Constant(1), s, sampler)
    key = jax.random.key(7)
    loss, aux = loss_fn({"scale": jnp.zeros(())}, {}, _batch(), key, state)
    t_key = jax.random.split(key, 3)[0]
    _, w = timesteps.sample(sampler, state, t_key, B)
    np.testing.assert_allclose(loss, np.mean(np.asarray(aux["per_example"]) * np.asarray(w)),
                               rtol=1e-5)


def test_bad_mode_and_feedforward_t_are_named():
    c = schema.base_config()
    c.model.mode = "segment"
    with pytest.raises(ValueError, match=r"config\.model\.mode"):
        objectives.from_config(c)
    c.model.mode, c.train.feedforward_t = "feedforward", 1000
    with pytest.raises(ValueError, match="feedforward_t"):
        objectives.from_config(c)
