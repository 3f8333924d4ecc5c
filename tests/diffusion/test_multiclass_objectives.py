"""Multi-class objectives: softmax Dice + cross-entropy (E1), per-channel diffusion losses,
and MedSegDiff's softmax calibration head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdiffseg import diffusion
from jdiffseg.config import schema
from jdiffseg.diffusion import objectives, timesteps


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _case(seed=0, b=2, k=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, 6, 6, k)).astype(np.float32)
    onehot = np.eye(k, dtype=np.float32)[rng.integers(0, k, (b, 6, 6))]
    return logits, onehot


def test_softmax_dice_and_cross_entropy_match_numpy():
    logits, onehot = _case()
    p = _softmax(logits.astype(np.float64))
    dice = []
    for b in range(len(p)):
        per_class = [
            (2 * (p[b, ..., c] * onehot[b, ..., c]).sum() + 1)
            / (p[b, ..., c].sum() + onehot[b, ..., c].sum() + 1)
            for c in range(1, 4)
        ]
        dice.append(1 - np.mean(per_class))
    np.testing.assert_allclose(objectives.softmax_dice_loss(logits, onehot), dice, rtol=1e-5)
    ce = -(onehot * np.log(p)).sum(-1).mean(axis=(1, 2))
    np.testing.assert_allclose(objectives.softmax_ce_loss(logits, onehot), ce, rtol=1e-5)
    # confident and right: both losses vanish
    sure = 30.0 * (2 * onehot - 1)
    assert float(jnp.max(objectives.softmax_ce_loss(sure, onehot))) < 1e-6
    assert float(jnp.max(objectives.softmax_dice_loss(sure, onehot))) < 0.05


class Echo(nn.Module):
    """Outputs fixed logits (plus 0 × a parameter) and a calibration head, whatever the input."""

    logits: np.ndarray

    @nn.compact
    def __call__(self, x_t, t, image=None, *, train=False):
        scale = self.param("scale", nn.initializers.zeros, ())
        out = jnp.asarray(self.logits) + scale
        return {"out": out, "cal": jax.nn.softmax(out, -1)}


def test_feedforward_loss_is_softmax_dice_plus_ce_plus_calibration():
    logits, onehot = _case(1)
    c = schema.base_config()
    c.model.mode = "feedforward"
    c.diffusion.num_timesteps = 50
    obj = objectives.from_config(c)
    loss_fn = objectives.make_loss_fn(
        obj, Echo(logits), diffusion.from_config(c.diffusion), timesteps.from_config(c.diffusion)
    )
    batch = {"image": jnp.zeros((2, 6, 6, 3)), "mask": jnp.asarray(onehot)}
    state = timesteps.init_state(timesteps.from_config(c.diffusion))
    loss, aux = loss_fn({"scale": jnp.zeros(())}, {}, batch, jax.random.key(0), state)
    cal = np.mean((_softmax(logits) - onehot) ** 2)
    want = (
        np.mean(
            objectives.softmax_dice_loss(logits, onehot)
            + objectives.softmax_ce_loss(logits, onehot)
        )
        + obj.cal_loss_weight * cal
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert aux["per_example"].shape == (2,)


def test_diffusion_loss_works_per_one_hot_channel():
    _, onehot = _case(2)
    c = schema.base_config()
    c.diffusion.num_timesteps, c.diffusion.prediction = 50, "x0"
    obj = objectives.from_config(c)

    class Perfect(nn.Module):  # predicts the true one-hot x0: zero target error
        @nn.compact
        def __call__(self, x_t, t, image=None, *, train=False):
            return {"out": jnp.asarray(onehot) + self.param("s", nn.initializers.zeros, ())}

    loss_fn = objectives.make_loss_fn(
        obj, Perfect(), diffusion.from_config(c.diffusion), timesteps.from_config(c.diffusion)
    )
    batch = {"image": jnp.zeros((2, 6, 6, 3)), "mask": jnp.asarray(onehot)}
    state = timesteps.init_state(timesteps.from_config(c.diffusion))
    loss, _ = loss_fn({"s": jnp.zeros(())}, {}, batch, jax.random.key(1), state)
    assert float(loss) < 1e-10


def test_medsegdiff_calibration_head_is_a_softmax_over_classes():
    from jdiffseg.models import build_model

    c = schema.base_config()
    c.model.arch = "medsegdiff"
    c.model.base_channels, c.model.norm_groups, c.model.channel_mult = 16, 8, (1, 2)
    c.model.encoder_base_channels, c.model.encoder_max_channels = 4, 16
    c.model.encoder_num_pool, c.model.attention_resolutions = 3, ()
    model = build_model(c.model, image_channels=3, mask_channels=4)
    x_t, image = jnp.zeros((1, 16, 16, 4)), jnp.ones((1, 16, 16, 3))
    variables = model.init(jax.random.key(0), x_t, jnp.zeros((1,), jnp.int32), image)
    out = model.apply(variables, x_t, jnp.zeros((1,), jnp.int32), image)
    assert out["out"].shape == (1, 16, 16, 4) and out["cal"].shape == (1, 16, 16, 4)
    np.testing.assert_allclose(np.sum(out["cal"], -1), 1.0, rtol=1e-5)
