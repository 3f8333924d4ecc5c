"""What the benchmark scripts share: preset configs, the device's peak FLOP/s and MFU, and the
FLOPs and memory of a lowered or compiled computation.

FLOPs come from XLA's cost analysis, which counts the body of a loop (`lax.scan`, `fori_loop`,
`lax.map`) once whatever its trip count, so a looped computation's FLOPs are counted as one
iteration's times the number of iterations (`loop_flops`). `cost_analysis()` and
`memory_analysis()` describe one device's share of a sharded computation: FLOPs here are
global (per device × devices) and MFU divides them by the peak of all devices; memory stays
per device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jaxlib

from jdiffseg.config import recipes
from jdiffseg.models import build_model
from jdiffseg.runtime import cpu_defaults, sharding
from jdiffseg.training import optim, train

GB = 1e9
# Dense peak FLOP/s per device: (float32 on TF32 tensor cores, bfloat16). XLA runs float32
# convolutions and dots on TF32 by default. The first name found in the device kind counts,
# so more specific names come first.
PEAK_FLOPS: dict[str, tuple[float, float]] = {
    "H100 PCIe": (378e12, 756e12),
    "H100 NVL": (418e12, 835e12),
    "H100": (494e12, 989e12),
    "H200 NVL": (418e12, 835e12),
    "H200": (494e12, 989e12),
    "A100": (156e12, 312e12),
    "L40S": (183e12, 362e12),
}


def load_config(arch: str, preset: str, *, mode: str | None = None, size: int | None = None,
                batch: int | None = None, dtype: str | None = None, remat: bool | None = None
                ) -> Any:
    """The recipe of `arch` (as `configs/<arch>.py`) at `preset` (and `mode`, else the file's
    default), with the given image size, global batch, compute dtype and remat where they are
    not None."""
    config = recipes.get_config(arch, f"preset={preset}" + (f",mode={mode}" if mode else ""))
    for section, key, value in (("data", "image_size", size), ("data", "batch_size", batch),
                                ("model", "dtype", dtype), ("model", "remat", remat)):
        if value is not None:
            config[section][key] = value
    return config


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """The real train step of a config, jitted over all devices with the state donated, and
    what it needs: `init(key)` makes the state; `abstract_state` is its shapes (no memory)."""

    init: Callable[[jax.Array], Any]
    abstract_state: Any
    state_shardings: Any
    step: Any
    mesh: jax.sharding.Mesh


def train_step(config: Any) -> TrainStep:
    """`jdiffseg.training.train`'s step for `config` (RGB images, one mask channel), as training
    runs it."""
    batch, size = int(config.data.batch_size), int(config.data.image_size)
    mesh = sharding.make_mesh()
    model = build_model(config.model, image_channels=3)
    tx = optim.make_optimizer(config.train)
    init = train.init_train_state(config, model, tx, (batch, size, size, 3))
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.state_shardings(abstract, mesh, fsdp=bool(config.train.fsdp))
    step = train.jit_train_step(train.make_train_step(config, model, tx), shardings, mesh)
    return TrainStep(init, abstract, shardings, step, mesh)


def batch_shapes(batch: int, size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of a training batch of `batch` RGB images and masks at `size` px."""
    return {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
            "mask": jax.ShapeDtypeStruct((batch, size, size, 1), jnp.float32)}


def peak_flops(dtype: str, device_kind: str | None = None) -> float | None:
    """One device's dense peak FLOP/s for the compute `dtype`, when its kind is known.

    `device_kind` defaults to the first device's, and only GPUs are looked up then.
    """
    if device_kind is None:
        device = jax.devices()[0]
        if device.platform != "gpu":
            return None
        device_kind = device.device_kind
    for name, (fp32, bf16) in PEAK_FLOPS.items():
        if name in device_kind:
            return bf16 if dtype == "bfloat16" else fp32
    return None


def mfu(flops: float | None, seconds: float, dtype: str) -> float | None:
    """Model FLOPs utilisation: global `flops` done in `seconds` over all devices' peak."""
    peak = peak_flops(dtype)
    if not flops or not peak or seconds <= 0:
        return None
    return flops / seconds / (peak * jax.device_count())


def rounded(value: float | None, digits: int, unit: float = 1.0) -> float | None:
    """`value / unit` rounded to `digits`, None for None (a figure the backend cannot give)."""
    return None if value is None else round(value / unit, digits)


def flops_columns(flops: float | None, seconds: float, dtype: str, per: str
                  ) -> dict[str, float | None]:
    """The JSON fields on compute: GFLOP per `per` (step, call) and MFU over `seconds`."""
    return {f"gflops_per_{per}": rounded(flops, 2, 1e9),
            "mfu": rounded(mfu(flops, seconds, dtype), 4)}


def device_tag() -> str:
    """'<count>x <kind>' of the devices, for the rows' "device" field."""
    return f"{jax.device_count()}x {jax.devices()[0].device_kind}"


def flops_of(cost: Any) -> float | None:
    """The 'flops' entry of a `cost_analysis()` result: a dict, a list of dicts (one per
    executable, older jax) or None; None when it is missing or not positive."""
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not isinstance(cost, Mapping):
        return None
    value = float(cost.get("flops", 0.0) or 0.0)
    return value if value > 0 else None


def compiled_flops(compiled: Any) -> float | None:
    """Global FLOPs of one call of a compiled computation without loops."""
    per_device = flops_of(compiled.cost_analysis())
    return per_device * jax.device_count() if per_device else None


def loop_flops(lowered: Any, iterations: int) -> float | None:
    """Global FLOPs of `iterations` calls of a loop body given as a lowered computation.

    The lowered (not yet optimised) module's cost analysis needs no compilation, which matters
    on a GPU where a compile takes tens of seconds; the compiled one is used where the lowered
    one gives no FLOPs. The body is lowered for the global batch, so no device factor.
    """
    try:
        flops = flops_of(lowered.cost_analysis())
    except Exception:  # a backend without it: the compiled analysis below serves
        flops = None
    if flops is None:
        flops = flops_of(lowered.compile().cost_analysis())
    return flops * iterations if flops else None


def memory_bytes(stats: Any) -> int | None:
    """Device bytes a compiled computation needs while it runs, from `memory_analysis()`:
    arguments + outputs − outputs aliased to donated arguments + temporaries + code.

    The GPU runtime allocates the temporaries as one block beside the arguments and outputs,
    so all of it is held at once; per device for sharded computations. None where the backend
    reports nothing.
    """
    if stats is None:
        return None
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes")
    total = sum(int(getattr(stats, f, 0) or 0) for f in fields)
    return total - int(getattr(stats, "alias_size_in_bytes", 0) or 0)


def compiled_memory(compiled: Any) -> int | None:
    """`memory_bytes` of a compiled computation (None where the backend cannot tell)."""
    try:
        return memory_bytes(compiled.memory_analysis())
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return None


def device_memory_stats() -> dict[str, int]:
    """The first device's allocator statistics ({} on backends without them, such as CPU)."""
    return jax.devices()[0].memory_stats() or {}


def process_peak_bytes() -> int | None:
    """The allocator's high-water mark on the first device since the process started: it
    cannot be reset, so it covers every computation run so far (GPU only)."""
    return device_memory_stats().get("peak_bytes_in_use")


def memory_columns(compiled: Any) -> dict[str, float | None]:
    """The JSON fields on memory: the computation's own need and the process's peak, in GB."""
    need, peak = compiled_memory(compiled), process_peak_bytes()
    return {"compiled_gb": rounded(need, 3, GB), "process_peak_gb": rounded(peak, 3, GB)}


def fmt(value: float | None, spec: str) -> str:
    """`value` in `spec` format, '-' for None."""
    return "-" if value is None else format(value, spec)


def device_line() -> str:
    """Devices, platform and library versions, to quote with the figures."""
    device = jax.devices()[0]
    return (f"devices: {jax.device_count()} x {device.device_kind} ({device.platform}); "
            f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}")


def json_line(row: Mapping[str, Any], bench: str) -> str:
    """A result row as one line of JSON, tagged with the benchmark's name."""
    return json.dumps({"bench": bench, **row})


def print_json(rows: Iterable[Mapping[str, Any]], bench: str) -> None:
    """One JSON line per row, after the human-readable table."""
    for row in rows:
        print(json_line(row, bench), flush=True)


JSONL_HELP = "also append each row, as it is done, as a JSON line to this file"


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Adds `--jsonl` and `--plain_xla`, parses, sets the CPU defaults (before JAX starts its
    backend) and prints them and the device line: the common start of the figure scripts."""
    parser.add_argument("--jsonl", default="", help=JSONL_HELP)
    parser.add_argument("--plain_xla", action="store_true", help=cpu_defaults.PLAIN_HELP)
    args = parser.parse_args()
    print(cpu_defaults.configure(args.plain_xla))
    print(device_line())
    return args


def append_jsonl(path: str, row: Mapping[str, Any], bench: str) -> None:
    """Appends `row` to the JSON-lines file `path` (nothing when empty): rows done before a
    run is cut short survive it, and one line per write keeps concurrent writers apart."""
    if path:
        with open(path, "a") as f:
            f.write(json_line(row, bench) + "\n")
