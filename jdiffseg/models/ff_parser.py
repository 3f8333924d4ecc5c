"""FF-Parser: a learnable filter in the 2-D Fourier domain (MedSegDiff v1).

The feature map is taken to the frequency domain with a real 2-D FFT ('ortho' norm),
multiplied element-wise by a learnable complex weight with one value per frequency and
channel, and brought back with the inverse real FFT. The FFT runs in float32 whatever the
compute dtype, as the authors cast to float32 before it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def ff_parse(x: jax.Array, weight: jax.Array) -> jax.Array:
    """Filters NHWC `x` with complex `weight` of shape (H, W // 2 + 1, C) in Fourier space."""
    height, width = x.shape[1], x.shape[2]
    spectrum = jnp.fft.rfft2(x.astype(jnp.float32), axes=(1, 2), norm="ortho")
    return jnp.fft.irfft2(spectrum * weight, s=(height, width), axes=(1, 2), norm="ortho")


class FFParser(nn.Module):
    """Learnable Fourier-domain filter; the weight's shape is fixed by the input at init.

    The parameter 'complex_weight' has shape (H, W // 2 + 1, C, 2) holding real and
    imaginary parts (the authors store (C, H, W // 2 + 1, 2)); it is initialised N(0, 0.02²).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, height, width, channels = x.shape
        shape = (height, width // 2 + 1, channels, 2)
        if self.has_variable("params", "complex_weight"):
            stored = self.get_variable("params", "complex_weight").shape
            if tuple(stored) != shape:
                raise ValueError(
                    f"FFParser at {self.path}: input of spatial size {height}x{width} with "
                    f"{channels} channels needs complex_weight of shape {shape}, the parameter "
                    f"has {tuple(stored)} (was the model initialised at another image size?)"
                )
        weight = self.param("complex_weight", nn.initializers.normal(0.02), shape, jnp.float32)
        return ff_parse(x, jax.lax.complex(weight[..., 0], weight[..., 1]))
