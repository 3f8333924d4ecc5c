"""Speed of the timestep analysis: one jitted vmapped/chunked call against a per-t Python loop.

    python benchmarks/curves.py --arch=ensemdiff --num_images=8 --num_timesteps=100 \
        --chunk_size=16
    python benchmarks/curves.py --preset=paper --dtype=bfloat16 --num_images=4 \
        --num_timesteps=1000 --chunk_size=8 --repeats=1 --no_loop           # 256 px, GPU

Both drivers run the same per-timestep step (`jdiffseg.analysis.curves.segmentation_step`) on
randomly initialised models of the preset (`configs/<arch>.py` in diffusion and mask-only
mode; speed does not depend on the weights) with the image, blank-image and mask-only
predictions. Printed: compile time (ahead of time for the vmapped call), steady-state seconds
and throughput in (timesteps × images)/s, the best of `--repeats` timed runs each, and the
largest difference between the two results per curve. For the vmapped call also MFU (one
timestep's cost analysis times the timesteps, `common.loop_flops`), the memory the compiled
call needs per device and the process's allocator peak (GPU); one JSON line follows.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np

from jdiffseg.analysis import curves
from jdiffseg.diffusion import schedules
from jdiffseg.models import build_model
from jdiffseg.runtime import cpu_defaults, sharding


def _model(config: Any, size: int) -> tuple[curves.Denoiser, Any]:
    """The config's denoiser and random variables at `size` px."""
    model = build_model(config.model, image_channels=3, mask_channels=1)
    image = jnp.zeros((1, size, size, 3)) if config.model.mode == "diffusion" else None
    variables = jax.jit(model.init)(
        jax.random.key(0), jnp.zeros((1, size, size, 1)), jnp.zeros((1,), jnp.int32), image
    )

    def apply(v, x, t, i):
        return model.apply(v, x, t, i, train=False)

    return curves.denoiser_from_config(config, apply), variables


def _timed(fn, repeats: int) -> tuple[float, float, dict]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return first - best, best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="ensemdiff")
    p.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    p.add_argument("--image_size", type=int, default=0, help="0: the preset's (32 or 256 px)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--num_images", type=int, default=8)
    p.add_argument("--num_timesteps", type=int, default=100)
    p.add_argument("--chunk_size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no_loop", action="store_true", help="time only the vmapped call")
    p.add_argument("--jsonl", default="", help=common.JSONL_HELP)
    p.add_argument("--plain_xla", action="store_true", help=cpu_defaults.PLAIN_HELP)
    args = p.parse_args()
    print(cpu_defaults.configure(args.plain_xla))

    configs = [common.load_config(args.arch, args.preset, mode=mode,
                                  size=args.image_size or None, dtype=args.dtype)
               for mode in ("diffusion", "mask_only")]
    for c in configs:
        c.diffusion.num_timesteps = args.num_timesteps
    size, n = int(configs[0].data.image_size), args.num_images
    (seg, seg_vars), (mask_only, mo_vars) = (_model(c, size) for c in configs)
    schedule = schedules.from_config(configs[0].diffusion)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
    masks = (rng.uniform(size=(n, size, size, 1)) > 0.5).astype(np.float32)
    mesh = sharding.make_mesh()
    data, _ = curves.shard_data(curves.segmentation_data(images, masks, 0), mesh)
    ts = jnp.asarray(curves.analysis_timesteps(args.num_timesteps))
    step = curves.segmentation_step(seg, schedule, mask_only)
    params = (seg_vars, mo_vars)
    work = len(ts) * n

    print(common.device_line())
    print(f"arch={args.arch} {args.preset}, {size}px, {args.dtype}, {n} images, "
          f"T={args.num_timesteps}, chunk={args.chunk_size}")
    vmapped = curves.vmapped_curves(step, args.chunk_size)
    start = time.perf_counter()
    compiled = vmapped.lower(params, data, ts).compile()
    compile_v = time.perf_counter() - start
    _, run_v, out_v = _timed(lambda: compiled(params, data, ts), args.repeats)
    flops = common.loop_flops(jax.jit(step).lower(params, data, ts[0]), len(ts))
    row = {"arch": args.arch, "preset": args.preset, "size": size, "dtype": args.dtype,
           "images": n, "timesteps": len(ts), "chunk_size": args.chunk_size,
           "device": common.device_tag(),
           "compile_s": round(compile_v, 2), "run_s": round(run_v, 3),
           "t_images_per_s": round(work / run_v, 2),
           **common.flops_columns(flops, run_v, args.dtype, "call"),
           **common.memory_columns(compiled)}
    print(f"vmapped: compile {compile_v:.1f}s, run {run_v:.2f}s, {work / run_v:.1f} (t x image)/s, "
          f"MFU {common.fmt(row['mfu'], '.1%')}, {common.fmt(row['compiled_gb'], '.2f')} GB, "
          f"process peak {common.fmt(row['process_peak_gb'], '.2f')} GB")
    if not args.no_loop:
        looped = curves.looped_curves(step)
        compile_l, run_l, out_l = _timed(lambda: looped(params, data, ts), args.repeats)
        print(f"looped:  compile {compile_l:.1f}s, run {run_l:.2f}s, "
              f"{work / run_l:.1f} (t x image)/s")
        print(f"speed-up {run_l / run_v:.2f}x")
        row["looped_t_images_per_s"] = round(work / run_l, 2)
        for k in sorted(out_v):
            # Dice/IoU can move by one pixel's worth where a prediction sits at the threshold.
            diff = float(jnp.max(jnp.abs(out_v[k] - out_l[k])))
            print(f"  max |vmapped - looped| {k}: {diff:.2e}")
    common.append_jsonl(args.jsonl, row, "analysis")
    common.print_json([row], "analysis")


if __name__ == "__main__":
    main()
