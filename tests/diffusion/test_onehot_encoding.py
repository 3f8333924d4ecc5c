"""One-hot encoding of multi-class masks, its check, and x0 -> class probabilities."""

import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.diffusion import encoding as enc

LABELS = np.array([[[0], [2]], [[3], [1]]])  # (2, 2, 1) label map over {0 … 3}


def test_mask_channels_keep_the_binary_case():
    assert enc.mask_channels(1) == 1
    assert enc.mask_channels(3) == 4
    with pytest.raises(ValueError, match="num_classes=0"):
        enc.mask_channels(0)


@pytest.mark.parametrize("encoding", enc.ENCODINGS)
def test_one_hot_round_trip(encoding):
    onehot = enc.one_hot_mask(LABELS, 3)
    assert onehot.shape == (2, 2, 4)
    np.testing.assert_array_equal(onehot[0, 1], [0, 0, 1, 0])
    enc.check_one_hot(onehot, "test")
    encoded = enc.encode_mask(onehot, encoding)
    low, high = enc.value_range(encoding)
    assert set(np.unique(encoded)) == {low, high}
    np.testing.assert_array_equal(enc.decode_labels(encoded), LABELS[..., 0])
    np.testing.assert_allclose(enc.class_probabilities(encoded, encoding), onehot)


def test_check_one_hot_names_the_pixel():
    onehot = np.asarray(enc.one_hot_mask(LABELS, 3)).copy()
    onehot[1, 0, 0] = 1.0  # pixel (1, 0) now has classes 0 and 3
    with pytest.raises(ValueError, match=r"batch 7: .*1 pixel\(s\).*index \(1, 0\)"):
        enc.check_one_hot(onehot, "batch 7")
    soft = np.full((1, 4), 0.25)  # sums to one but is not one-hot
    with pytest.raises(ValueError, match="in \\{0, 1\\}"):
        enc.check_one_hot(soft, "soft")


@pytest.mark.parametrize("encoding", enc.ENCODINGS)
def test_class_probabilities_clip_and_renormalise(encoding):
    decoded = np.array([[1.2, 0.6, -0.3], [-0.5, -0.1, -2.0], [0.2, 0.2, 0.1]], np.float32)
    low, high = enc.value_range(encoding)
    x = jnp.asarray(low + (high - low) * decoded)
    probs = np.asarray(enc.class_probabilities(x, encoding))
    clipped = np.clip(decoded, 0, 1)
    np.testing.assert_allclose(probs[0], clipped[0] / clipped[0].sum(), rtol=1e-6)
    np.testing.assert_allclose(probs[1], [1 / 3] * 3, rtol=1e-6)  # everything clipped to 0
    np.testing.assert_allclose(probs[2], [0.4, 0.4, 0.2], rtol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
