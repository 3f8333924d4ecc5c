"""Speed of the timestep analysis: one jitted vmapped/chunked call against a per-t Python loop.

    python benchmarks/analysis.py --arch=ensemdiff --image_size=32 --num_images=8 \
        --num_timesteps=100 --chunk_size=16

Both drivers run the same per-timestep step (`jdiffseg.analysis.segmentation_step`) on a
randomly initialised model of the 'tiny' preset (speed does not depend on the weights) with
the image, blank-image and mask-only predictions. Printed: compile time, steady-state seconds
and throughput in (timesteps × images)/s, the best of `--repeats` timed runs each, and the
largest difference between the two results per curve.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jdiffseg import analysis, configlib, cpu_defaults, sharding
from jdiffseg.diffusion import schedules
from jdiffseg.models import build_model


def _model(config, mode: str, size: int):
    c = configlib.from_json(configlib.to_json(config))
    c.model.mode = mode
    model = build_model(c.model, image_channels=3, mask_channels=1)
    image = jnp.zeros((1, size, size, 3)) if mode == "diffusion" else None
    variables = jax.jit(model.init)(
        jax.random.key(0), jnp.zeros((1, size, size, 1)), jnp.zeros((1,), jnp.int32), image
    )

    def apply(v, x, t, i):
        return model.apply(v, x, t, i, train=False)

    return analysis.denoiser_from_config(c, apply), variables


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
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--num_images", type=int, default=8)
    p.add_argument("--num_timesteps", type=int, default=100)
    p.add_argument("--chunk_size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no_loop", action="store_true", help="time only the vmapped call")
    p.add_argument("--plain_xla", action="store_true", help=cpu_defaults.PLAIN_HELP)
    args = p.parse_args()
    print(cpu_defaults.configure(args.plain_xla))

    config = configlib.base_config()
    config.model.arch = args.arch
    config.diffusion.num_timesteps = args.num_timesteps
    seg, seg_vars = _model(config, "diffusion", args.image_size)
    mask_only, mo_vars = _model(config, "mask_only", args.image_size)
    schedule = schedules.from_config(config.diffusion)
    rng = np.random.default_rng(0)
    size, n = args.image_size, args.num_images
    images = rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
    masks = (rng.uniform(size=(n, size, size, 1)) > 0.5).astype(np.float32)
    mesh = sharding.make_mesh()
    data, _ = analysis.shard_data(analysis.segmentation_data(images, masks, 0), mesh)
    ts = jnp.asarray(analysis.analysis_timesteps(args.num_timesteps))
    step = analysis.segmentation_step(seg, schedule, mask_only)
    params = (seg_vars, mo_vars)
    work = len(ts) * n

    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; arch={args.arch} "
          f"tiny, {size}px, {n} images, T={args.num_timesteps}, chunk={args.chunk_size}")
    vmapped = analysis.vmapped_curves(step, args.chunk_size)
    compile_v, run_v, out_v = _timed(lambda: vmapped(params, data, ts), args.repeats)
    print(f"vmapped: compile {compile_v:.1f}s, run {run_v:.2f}s, {work / run_v:.1f} (t x image)/s")
    if args.no_loop:
        return
    looped = analysis.looped_curves(step)
    compile_l, run_l, out_l = _timed(lambda: looped(params, data, ts), args.repeats)
    print(f"looped:  compile {compile_l:.1f}s, run {run_l:.2f}s, {work / run_l:.1f} (t x image)/s")
    print(f"speed-up {run_l / run_v:.2f}x")
    for k in sorted(out_v):
        # Dice/IoU can move by one pixel's worth where a prediction sits at the threshold.
        diff = float(jnp.max(jnp.abs(out_v[k] - out_l[k])))
        print(f"  max |vmapped - looped| {k}: {diff:.2e}")


if __name__ == "__main__":
    main()
