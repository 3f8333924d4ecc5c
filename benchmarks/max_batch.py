r"""The largest batch per device whose train step fits in device memory, with and without remat.

    python benchmarks/max_batch.py --presets=paper --sizes=256 --dtypes=bfloat16   # on a GPU
    python benchmarks/max_batch.py --archs=nnunet --sizes=16 --memory_gb=0.05       # CPU check

The figure is the compiler's estimate. The real train step (`common.train_step`, as training
jits it) is lowered for shape-only state and batch, so nothing is allocated, and compiled; its
`memory_analysis()` gives the bytes one device needs (`common.memory_bytes`). Those are close to
affine in the batch, so compiles at the two `--probes` batches give a line, the line predicts
the largest batch under the limit, and compiles at the prediction and one above confirm it or
move the guess (`largest_fitting`): about four compiles per row.

The limit is the allocator's `bytes_limit` on a GPU (the share XLA_PYTHON_CLIENT_MEM_FRACTION
gives it, 75 % of the card by default) and `--memory_gb` elsewhere or when given. `--run` then
initialises the state and runs one step at the batch found, to confirm it fits for real.
One JSON line per row goes to stdout after the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import common
import jax
import numpy as np

from jdiffseg.runtime import sharding

ARCHS = ("ensemdiff", "segdiff", "medsegdiff", "nnunet")


@dataclasses.dataclass(frozen=True)
class Search:
    """The outcome of `largest_fitting`: `batch` fits (0: not even one), `batch + 1` does not
    when `converged`; `measured` maps each batch tried to its bytes."""

    batch: int
    measured: dict[int, float]
    converged: bool


def line_through(p: tuple[int, float], q: tuple[int, float]) -> tuple[float, float]:
    """(intercept, slope) of the line through two (batch, bytes) points."""
    slope = (q[1] - p[1]) / (q[0] - p[0])
    return p[1] - slope * p[0], slope


def largest_fitting(bytes_at: Callable[[int], float], limit: float,
                    probes: Sequence[int] = (2, 16), max_evals: int = 8, cap: int = 1 << 16
                    ) -> Search:
    """The largest batch b ≤ `cap` with `bytes_at(b) <= limit`, for `bytes_at` increasing and
    close to affine in b (infinite where b cannot even be compiled).

    After the probes, each step fits a line through the last two points measured (a secant
    step) and measures its prediction, kept strictly between the largest batch known to fit
    and the smallest known not to; it stops when those two are adjacent or after `max_evals`
    evaluations. An affine `bytes_at` takes the probes, the prediction and one above it.
    """
    if len(set(probes)) < 2 or min(probes) < 1:
        raise ValueError(f"probes must be two or more different batches >= 1, got {probes}")
    measured = {b: bytes_at(b) for b in probes}
    while True:
        fit = max((b for b, m in measured.items() if m <= limit), default=0)
        over = min((b for b, m in measured.items() if m > limit and b > fit), default=None)
        if over == fit + 1:
            return Search(fit, measured, converged=True)
        if len(measured) >= max_evals or fit >= cap:
            return Search(fit, measured, converged=False)
        last = list(measured.items())[-2:]
        if not all(math.isfinite(m) for _, m in last):
            guess = (fit + over) // 2  # no line through a failed compile: bisect
        else:
            intercept, slope = line_through(*last)
            guess = int(np.floor((limit - intercept) / slope)) if slope > 0 else 2 * fit or 1
        b = min(max(guess, fit + 1), cap if over is None else over - 1)
        measured[b] = bytes_at(b)


def step_bytes(arch: str, preset: str, size: int, dtype: str, remat: bool, per_device: int
               ) -> float:
    """Bytes per device of the compiled train step at `per_device` images on each device;
    infinite when compiling runs out of memory (GPU autotuning runs the convolutions)."""
    config = common.load_config(arch, preset, size=size, batch=per_device * jax.device_count(),
                                dtype=dtype, remat=remat)
    parts = common.train_step(config)
    lowered = parts.step.lower(parts.abstract_state,
                               common.batch_shapes(int(config.data.batch_size), size))
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
            return math.inf
        raise
    need = common.compiled_memory(compiled)
    if need is None:
        raise RuntimeError("this backend reports no memory analysis for compiled computations")
    return need


def run_one_step(arch: str, preset: str, size: int, dtype: str, remat: bool, per_device: int
                 ) -> str:
    """'ok' when one real train step at `per_device` images per device runs, else the error."""
    batch = per_device * jax.device_count()
    config = common.load_config(arch, preset, size=size, batch=batch, dtype=dtype, remat=remat)
    try:
        parts = common.train_step(config)
        state = jax.jit(parts.init, out_shardings=parts.state_shardings)(jax.random.key(0))
        data = {k: np.zeros(v.shape, v.dtype) for k, v in common.batch_shapes(batch, size).items()}
        data = jax.device_put(data, sharding.batch_sharding(parts.mesh))
        state, metrics = parts.step(state, data)
        jax.block_until_ready(metrics)
    except jax.errors.JaxRuntimeError as e:
        return str(e).splitlines()[0][:120]
    return "ok"


def memory_limit(memory_gb: float) -> tuple[float, str]:
    """The per-device limit in bytes and where it comes from."""
    if memory_gb > 0:
        return memory_gb * common.GB, "--memory_gb"
    limit = common.device_memory_stats().get("bytes_limit")
    if not limit:
        raise SystemExit("this device reports no memory limit: give --memory_gb")
    return float(limit), "allocator bytes_limit"


def search_row(arch: str, preset: str, size: int, dtype: str, remat: bool, limit: float,
               args: argparse.Namespace) -> dict:
    """One row: the search's result, the line through its probes and the compile count."""
    start = time.perf_counter()
    probes = tuple(int(p) for p in args.probes.split(","))

    def bytes_at(per_device: int) -> float:
        return step_bytes(arch, preset, size, dtype, remat, per_device)

    found = largest_fitting(bytes_at, limit, probes, max_evals=args.max_compiles)
    intercept, slope = line_through(*((b, found.measured[b]) for b in probes[:2]))
    line_known = math.isfinite(intercept) and math.isfinite(slope)
    row = {
        "arch": arch, "preset": preset, "size": size, "dtype": dtype, "remat": remat,
        "max_batch_per_device": found.batch, "converged": found.converged,
        "gb_at_max": round(found.measured[found.batch] / common.GB, 3) if found.batch else None,
        "limit_gb": round(limit / common.GB, 3),
        "gb_per_image": round(slope / common.GB, 4) if line_known else None,
        "fixed_gb": round(intercept / common.GB, 3) if line_known else None,
        "compiles": len(found.measured), "seconds": round(time.perf_counter() - start, 1),
        "bytes_by_batch": {b: int(m) if math.isfinite(m) else None
                           for b, m in sorted(found.measured.items())},
        "device": common.device_tag(),
    }
    if args.run and found.batch:
        row["run_at_max"] = run_one_step(arch, preset, size, dtype, remat, found.batch)
    return row


def format_row(r: dict) -> str:
    """One line of the table."""
    note = "" if r["converged"] else " (not converged)"
    return (f"{r['arch']:<11}{r['preset']:<7}{r['size']:>5}{r['dtype']:>10}{r['remat']!s:>6}"
            f"{r['max_batch_per_device']:>9}{common.fmt(r['gb_at_max'], '.2f'):>9}"
            f"{common.fmt(r['gb_per_image'], '.3f'):>9}{common.fmt(r['fixed_gb'], '.2f'):>9}"
            f"{r['compiles']:>9}{r['seconds']:>7.0f}  {r.get('run_at_max', '-')}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--presets", default="paper")
    parser.add_argument("--sizes", default="256")
    parser.add_argument("--dtypes", default="bfloat16", help="comma-separated compute dtypes")
    parser.add_argument("--remat", default="0,1", help="comma-separated: 0 without, 1 with")
    parser.add_argument("--memory_gb", type=float, default=0.0,
                        help="per-device limit; 0: the GPU allocator's bytes_limit")
    parser.add_argument("--probes", default="2,16", help="the two batches the line starts from")
    parser.add_argument("--max_compiles", type=int, default=8, help="per row")
    parser.add_argument("--run", action="store_true", help="run one real step at the batch found")
    args = common.parse_args(parser)
    limit, source = memory_limit(args.memory_gb)
    print(f"limit per device: {limit / common.GB:.2f} GB ({source}); memory is the compiler's "
          "estimate: arguments + outputs - donated + temporaries + code")
    print(f"{'arch':<11}{'preset':<7}{'px':>5}{'dtype':>10}{'remat':>6}{'max/dev':>9}"
          f"{'GB@max':>9}{'GB/img':>9}{'fixed GB':>9}{'compiles':>9}{'s':>7}  run")
    rows = []
    for arch in args.archs.split(","):
        for preset in args.presets.split(","):
            for size in map(int, args.sizes.split(",")):
                for dtype in args.dtypes.split(","):
                    for remat in (bool(int(r)) for r in args.remat.split(",")):
                        rows.append(search_row(arch, preset, size, dtype, remat, limit, args))
                        common.append_jsonl(args.jsonl, rows[-1], "max_batch")
                        print(format_row(rows[-1]), flush=True)
    common.print_json(rows, "max_batch")


if __name__ == "__main__":
    main()
