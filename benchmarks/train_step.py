r"""Train-step speed per architecture preset and image size: ms/step, images/s and, on GPU, MFU.

    python benchmarks/train_step.py                                  # tiny presets, 64 and 256 px
    python benchmarks/train_step.py --presets=paper --batch_size=8 --dtype=bfloat16   # on a GPU

The step is the real one (`jdiffseg.train.make_train_step`, jitted over all devices with the
state donated) on random data. FLOPs come from the compiled step's `cost_analysis()`; MFU is
FLOPs per second over the device's dense peak for the compute dtype (known GPUs only).
One JSON line per row goes to stdout after the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import jax
import numpy as np

from jdiffseg import cpu_defaults, optim, sharding, train
from jdiffseg.models import build_model

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("ensemdiff", "segdiff", "medsegdiff", "nnunet")
# Dense peak FLOP/s per device: (float32 or TF32 tensor cores, bfloat16).
PEAK_FLOPS = {
    "H100": (494e12, 989e12),
    "H200": (494e12, 989e12),
    "A100": (156e12, 312e12),
    "L40S": (183e12, 362e12),
}


def load_config(arch: str, preset: str, size: int, batch: int, dtype: str):
    """configs/<arch>.py at `preset`, resized to `size` px and global batch `batch`."""
    spec = importlib.util.spec_from_file_location(arch, REPO / "configs" / f"{arch}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(f"preset={preset}")
    config.data.image_size, config.data.batch_size = size, batch
    config.model.dtype = dtype
    return config


def peak_flops(dtype: str) -> float | None:
    """The device's dense peak for `dtype`, when known."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return None
    for name, (fp32, bf16) in PEAK_FLOPS.items():
        if name in device.device_kind:
            return (bf16 if dtype == "bfloat16" else fp32) * jax.device_count()
    return None


def bench(arch: str, preset: str, size: int, batch: int, dtype: str, steps: int) -> dict:
    """Times `steps` train steps after one warm-up step."""
    config = load_config(arch, preset, size, batch, dtype)
    mesh = sharding.make_mesh()
    model = build_model(config.model, image_channels=3)
    tx = optim.make_optimizer(config.train)
    init = train.init_train_state(config, model, tx, (batch, size, size, 3))
    abstract = jax.eval_shape(init, jax.random.key(0))
    shard = sharding.state_shardings(abstract, mesh, fsdp=bool(config.train.fsdp))
    state = jax.jit(init, out_shardings=shard)(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch_data = jax.device_put(
        {"image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
         "mask": (rng.uniform(size=(batch, size, size, 1)) > 0.5).astype(np.float32)},
        sharding.batch_sharding(mesh))
    step = train.jit_train_step(train.make_train_step(config, model, tx), shard, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch_data).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    state, metrics = compiled(state, batch_data)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch_data)
    jax.block_until_ready(metrics)
    sec = (time.perf_counter() - t0) / steps
    peak = peak_flops(dtype)
    return {
        "arch": arch, "preset": preset, "size": size, "batch": batch, "dtype": dtype,
        "device": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract.params))),
        "compile_s": round(compile_s, 2), "ms_per_step": round(1e3 * sec, 2),
        "images_per_s": round(batch / sec, 2), "gflops_per_step": round(flops / 1e9, 2),
        "mfu": round(flops / sec / peak, 4) if peak and flops else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--presets", default="tiny")
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--plain_xla", action="store_true", help=cpu_defaults.PLAIN_HELP)
    args = parser.parse_args()
    print(cpu_defaults.configure(args.plain_xla))
    rows = []
    header = f"{'arch':<11}{'preset':<7}{'px':>5}{'batch':>6}{'params':>12}{'ms/step':>10}"
    print(header + f"{'img/s':>9}{'GFLOP':>9}{'MFU':>7}")
    for arch in args.archs.split(","):
        for preset in args.presets.split(","):
            for size in map(int, args.sizes.split(",")):
                r = bench(arch, preset, size, args.batch_size, args.dtype, args.steps)
                rows.append(r)
                mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
                print(f"{arch:<11}{preset:<7}{size:>5}{r['batch']:>6}{r['params']:>12,}"
                      f"{r['ms_per_step']:>10.1f}{r['images_per_s']:>9.1f}"
                      f"{r['gflops_per_step']:>9.1f}{mfu:>7}", flush=True)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
