"""XLA CPU settings that jdiffseg's commands apply by default.

XLA's CPU backend (jaxlib 0.10) runs convolutions and dots as YNNPACK fusions, each on one
thread, so a train step leaves all other cores idle; its Eigen kernels use every core. On two
cores this takes the tiny EnsemDiff train step at 64 px from 386 to 310 ms on an AVX2 machine and
from 343 to 305 ms on an AVX-512 one (`benchmarks/RESULTS.md`). The switch is an experimental
XLA flag, so it is set only for the jaxlib versions it was measured with, never over a user's own
setting of it, and must run before JAX starts its CPU backend (the first computation).
Accelerators ignore it.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import MutableMapping

MEASURED_JAXLIB = ("0.10.",)
YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"


def apply(environ: MutableMapping[str, str] = os.environ, jaxlib_version: str | None = None
          ) -> bool:
    """Adds `--xla_cpu_experimental_ynn_fusion_type=` (no YNNPACK fusions) to XLA_FLAGS.

    Returns whether it was added: not when the installed jaxlib is not one it was measured
    with, nor when XLA_FLAGS already sets the flag.
    """
    version = jaxlib_version or importlib.metadata.version("jaxlib")
    current = environ.get("XLA_FLAGS", "")
    if not version.startswith(MEASURED_JAXLIB) or YNN_FLAG in current:
        return False
    environ["XLA_FLAGS"] = f"{current} --{YNN_FLAG}=".strip()
    return True


PLAIN_HELP = "leave XLA's CPU defaults (YNNPACK fusions) as they are"


def configure(plain: bool) -> str:
    """For benchmarks: applies the defaults unless `plain`; returns a line saying what is set."""
    applied = False if plain else apply()
    return f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} (jdiffseg CPU defaults: {applied})"
