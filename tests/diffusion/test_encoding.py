"""Mask encodings {0,1} and {-1,1}."""

import jax.numpy as jnp
import numpy as np
import pytest

from jdiffseg.diffusion import encoding as enc

MASK = jnp.array([[0.0, 1.0], [1.0, 0.0]])


def test_encode_values():
    np.testing.assert_array_equal(enc.encode_mask(MASK, "zero_one"), MASK)
    np.testing.assert_array_equal(enc.encode_mask(MASK, "plus_minus_one"), [[-1, 1], [1, -1]])


@pytest.mark.parametrize("encoding", enc.ENCODINGS)
def test_round_trip_threshold_and_range(encoding):
    encoded = enc.encode_mask(MASK, encoding)
    np.testing.assert_array_equal(enc.decode_mask(encoded, encoding), MASK)
    np.testing.assert_array_equal(enc.binarize(encoded, encoding), MASK)
    low, high = enc.value_range(encoding)
    assert float(encoded.min()) == low and float(encoded.max()) == high
    assert enc.threshold_for(encoding) == (low + high) / 2
    # Soft values: decoding is the linear map onto [0, 1]; the threshold sits at 0.5 there.
    mid = (low + high) / 2
    soft = jnp.array([low - 0.5, mid - 0.01, mid + 0.01, high + 0.5])
    expected = (np.asarray(soft) - low) / (high - low)
    np.testing.assert_allclose(enc.decode_mask(soft, encoding), expected, atol=1e-6)
    np.testing.assert_allclose(
        enc.decode_mask(soft, encoding, clip=True), np.clip(expected, 0, 1), atol=1e-6
    )
    np.testing.assert_array_equal(enc.binarize(soft, encoding), [0, 0, 1, 1])


def test_plus_minus_one_decoding_and_threshold_values():
    assert enc.threshold_for("plus_minus_one") == 0.0
    assert enc.threshold_for("zero_one") == 0.5
    np.testing.assert_allclose(
        enc.decode_mask(jnp.array([-1.0, 0.0, 1.0]), "plus_minus_one"), [0, 0.5, 1]
    )


def test_unknown_encoding_raises():
    with pytest.raises(ValueError, match="unknown mask encoding 'binary'"):
        enc.encode_mask(MASK, "binary")
    with pytest.raises(ValueError, match="unknown mask encoding"):
        enc.threshold_for("minus_one_one")
