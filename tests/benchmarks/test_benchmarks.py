"""The benchmarks' shared helpers (peak FLOP/s, MFU, FLOPs and memory of compiled computations)
and max_batch.py's search for the largest batch that fits. No timings are checked."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
import max_batch  # noqa: E402


@pytest.mark.parametrize(
    ("fixed", "per_image", "limit"),
    [(1000, 37, 1000), (1000, 37, 1036), (1000, 37, 1037), (1000, 37, 1185), (1000, 37, 5000),
     (5e9, 1.3e9, 80e9), (5e9, 1.3e9, 6e9), (2e8, 3e6, 1e9)],
)
def test_affine_memory_is_found_exactly_in_four_evaluations(fixed, per_image, limit):
    calls = []

    def bytes_at(b):
        calls.append(b)
        return fixed + per_image * b

    found = max_batch.largest_fitting(bytes_at, limit, probes=(2, 16))
    assert found.batch == max(0, math.floor((limit - fixed) / per_image))
    assert found.converged and len(calls) <= 4 and len(set(calls)) == len(calls)


def test_nearly_affine_and_stepped_memory_converge():
    def padded(b):  # batches padded to a multiple of 8, plus a little curvature
        return 1e6 + 5e4 * math.ceil(b / 8) * 8 + 10 * b * b

    limit = 2e7
    found = max_batch.largest_fitting(padded, limit, probes=(2, 16), max_evals=10)
    truth = max(b for b in range(1, 2000) if padded(b) <= limit)
    assert found.converged and found.batch == truth
    assert found.measured[truth] <= limit < found.measured[truth + 1]


def test_batches_that_cannot_compile_count_as_not_fitting():
    def bytes_at(b):  # beyond 60 the compile itself runs out of memory
        return 1000 + 37 * b if b <= 60 else math.inf

    found = max_batch.largest_fitting(bytes_at, 1000 + 37 * 100, probes=(2, 16), max_evals=12)
    assert (found.batch, found.converged) == (60, True)


def test_search_stops_at_the_cap_and_rejects_bad_probes():
    found = max_batch.largest_fitting(lambda b: 10 + b, 1e12, probes=(1, 2), cap=64)
    assert (found.batch, found.converged) == (64, False)
    with pytest.raises(ValueError):
        max_batch.largest_fitting(lambda b: b, 10, probes=(4, 4))


@pytest.mark.parametrize(
    ("kind", "dtype", "peak"),
    [("NVIDIA H100 80GB HBM3", "bfloat16", 989e12), ("NVIDIA H100 80GB HBM3", "float32", 494e12),
     ("NVIDIA H100 PCIe", "bfloat16", 756e12), ("NVIDIA H200", "bfloat16", 989e12),
     ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12), ("NVIDIA L40S", "float32", 183e12),
     ("Tesla T4", "bfloat16", None)],
)
def test_peak_flops_of_known_device_kinds(kind, dtype, peak):
    assert common.peak_flops(dtype, kind) == peak


def test_mfu_uses_every_devices_peak_and_is_none_without_one(monkeypatch):
    assert common.mfu(1e12, 1.0, "bfloat16") is None  # CPU: no known peak
    monkeypatch.setattr(common, "peak_flops", lambda dtype: 1e12)
    assert common.mfu(5e11, 1.0, "bfloat16") == pytest.approx(0.5 / jax.device_count())
    assert common.mfu(None, 1.0, "bfloat16") is None


@pytest.mark.parametrize(
    ("cost", "flops"),
    [({"flops": 12.0}, 12.0), ([{"flops": 3.0, "bytes accessed": 1.0}], 3.0), (None, None),
     ([], None), ({}, None), ({"flops": 0.0}, None), ({"flops": -1.0}, None)],
)
def test_flops_of_every_cost_analysis_form(cost, flops):
    assert common.flops_of(cost) == flops


def test_memory_bytes_counts_donated_outputs_once():
    stats = types.SimpleNamespace(argument_size_in_bytes=50, output_size_in_bytes=10,
                                  alias_size_in_bytes=5, temp_size_in_bytes=100)
    assert common.memory_bytes(stats) == 155
    assert common.memory_bytes(None) is None


def test_compiled_memory_and_flops_of_a_donating_matmul():
    x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
    compiled = jax.jit(lambda a, b: (a @ b, a + 1), donate_argnums=(0,)).lower(x, x).compile()
    size = 256 * 256 * 4
    assert common.compiled_memory(compiled) >= 3 * size  # two inputs, one output aliased
    assert common.compiled_flops(compiled) >= 2 * 256**3 * jax.device_count()


def test_loop_flops_counts_every_iteration():
    x = jax.ShapeDtypeStruct((128, 128), jnp.float32)
    body = jax.jit(lambda a: jnp.tanh(a @ a)).lower(x)
    assert common.loop_flops(body, 10) == pytest.approx(10 * common.flops_of(body.cost_analysis()))
    # What the helper works around: XLA counts a loop's body once.
    loop = jax.jit(lambda a: jax.lax.fori_loop(0, 10, lambda i, b: jnp.tanh(b @ a), a)).lower(x)
    assert common.flops_of(loop.compile().cost_analysis()) < common.loop_flops(body, 2)


def test_gpu_suite_parses():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")], check=True)


@pytest.mark.slow
def test_max_batch_finds_a_batch_that_fits_where_one_more_does_not(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    limit_gb = 0.004
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "max_batch.py"), "--archs=nnunet",
         "--presets=tiny", "--sizes=16", "--dtypes=float32", "--remat=0",
         f"--memory_gb={limit_gb}", "--probes=2,8", f"--jsonl={jsonl}"],
        check=True, capture_output=True, text=True, timeout=300)
    (row,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    measured = {int(b): n for b, n in row["bytes_by_batch"].items()}
    batch = row["max_batch_per_device"]
    assert row["converged"] and batch >= 1
    assert measured[batch] <= limit_gb * common.GB < measured[batch + 1]
