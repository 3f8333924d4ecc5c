"""Volumetric data through the training pipeline: float channels survive augmentation."""

import numpy as np
import pytest

from jdiffseg.data.augment import AugmentConfig, augment


def test_float_channels_are_augmented_with_their_mask():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (16, 16, 4)).astype(np.float32)
    image[..., 1] = 5.0  # a constant channel stays constant under any geometry
    mask = np.zeros((16, 16, 1), np.uint8)
    mask[4:9, 3:12] = 1
    image[..., 0] = mask[..., 0] * 3.0 - 1.0  # channel 0 mirrors the mask
    for seed in range(4):
        out, m = augment(image, mask, np.random.default_rng(seed), AugmentConfig(crop_scale=0.5))
        assert out.dtype == np.float32 and out.shape == (16, 16, 4) and m.shape == (16, 16, 1)
        np.testing.assert_allclose(out[..., 1], 5.0, rtol=1e-6)
        inside = out[..., 0][m[..., 0] == 1]
        assert inside.size and inside.mean() > 1.0  # the mask still covers the bright region
    out, m = augment(image, mask, np.random.default_rng(1), AugmentConfig(crop_scale=1.0))
    assert sorted(np.unique(out[..., 0]).tolist()) == [-1.0, 2.0]
    np.testing.assert_array_equal(out[..., 0] == 2.0, m[..., 0] == 1)
    with pytest.raises(ValueError, match="color_jitter works on RGB images only"):
        augment(image, mask, rng, AugmentConfig(color_jitter=0.2))
