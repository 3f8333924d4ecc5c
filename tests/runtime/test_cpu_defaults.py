"""The CPU defaults: when the XLA flag is added, and that it takes convolutions off YNNPACK."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jdiffseg.runtime import cpu_defaults


def test_adds_the_flag_to_existing_xla_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert cpu_defaults.apply(env, jaxlib_version="0.10.2")
    assert env["XLA_FLAGS"] == (
        "--xla_force_host_platform_device_count=2 --xla_cpu_experimental_ynn_fusion_type="
    )


def test_never_overrides_the_users_setting_or_untested_versions():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"}
    assert not cpu_defaults.apply(env, jaxlib_version="0.10.2")
    assert env["XLA_FLAGS"].endswith("LIBRARY_FUSION_TYPE_DOT")
    empty: dict[str, str] = {}
    assert not cpu_defaults.apply(empty, jaxlib_version="0.11.0") and empty == {}


_PROBE = """
import jax, jax.numpy as jnp
from jdiffseg.runtime import cpu_defaults
applied = cpu_defaults.apply()  # after importing jax, before its first computation
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(jnp.ones((4, 64, 64, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
print(applied, "ynn_fusion" in hlo)
"""


def test_the_flag_takes_convolutions_off_ynnpack():
    env = {"PATH": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    if out[0] != "True":
        pytest.skip("this jaxlib is not one the CPU defaults were measured with")
    assert out == ["True", "False"]
