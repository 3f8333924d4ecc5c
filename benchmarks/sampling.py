"""Speed of ensemble sampling: images/s for a 5-member DDPM ensemble over the full 1000-step
chain and for DDIM with 50 respaced steps, per architecture preset.

    python benchmarks/sampling.py                                   # tiny presets, 32 px (CPU)
    python benchmarks/sampling.py --preset=paper --batch=4 --dtype=bfloat16   # 256 px (GPU)
    python benchmarks/sampling.py --archs=ensemdiff --image_size=32 --ddpm_steps=100

Each run builds the architecture's config (`configs/<arch>.py:preset=...`) in diffusion mode with
T = `--ddpm_steps`, initialises random weights (speed does not depend on them) and times
`jdiffseg.scoring.predictors.make_predictor`, the function `jdiffseg evaluate` uses:
`--batch` images ×
`--members` members sampled in one jitted call, sharded over all devices. Printed per
architecture and sampler: compile seconds (ahead of time, so no call includes it), seconds per
call (best of `--repeats`), images/s and seconds per image; MFU from the model FLOPs of the
chain (one denoiser call's cost analysis times the steps, `common.loop_flops`), the memory the
compiled call needs per device and the process's allocator peak (GPU). Quote figures with the
device line; one JSON line per row follows the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import common
import jax
import jax.numpy as jnp
import numpy as np

from jdiffseg.models import build_model
from jdiffseg.runtime import sharding
from jdiffseg.scoring import predictors

ARCHS = ("ensemdiff", "segdiff", "medsegdiff")


def forward_flops(model: Any, variables: Any, examples: int, size: int, steps: int
                  ) -> float | None:
    """Model FLOPs of a chain of `steps` denoiser calls on `examples` masks (images ×
    members): one call's, from its cost analysis, times the steps (`common.loop_flops`)."""
    apply = jax.jit(lambda v, x, t, image: model.apply(v, x, t, image, train=False))
    lowered = apply.lower(variables, jax.ShapeDtypeStruct((examples, size, size, 1), jnp.float32),
                          jax.ShapeDtypeStruct((examples,), jnp.int32),
                          jax.ShapeDtypeStruct((examples, size, size, 3), jnp.float32))
    return common.loop_flops(lowered, steps)


def time_sampler(config: Any, options: predictors.SamplingOptions, batch: int, steps: int,
                 repeats: int) -> dict[str, Any]:
    """Compile and steady-state timings, FLOPs, MFU and memory of one sampling call for
    `batch` images over a chain of `steps` steps."""
    size = int(config.data.image_size)
    model = build_model(config.model, image_channels=3)
    mesh = sharding.make_mesh()
    key = jax.random.key(0)
    variables = jax.jit(model.init)(
        {"params": key, "dropout": key}, jnp.zeros((1, size, size, 1)),
        jnp.zeros((1,), jnp.int32), jnp.zeros((1, size, size, 3)))
    variables = jax.device_put(variables, sharding.replicated(mesh))
    images = jax.device_put(
        jax.random.uniform(key, (batch, size, size, 3), minval=-1.0, maxval=1.0),
        sharding.batch_sharding(mesh))
    predict = predictors.make_predictor(config, model, options, mesh=mesh)
    start = time.perf_counter()
    compiled = predict.lower(variables, images, key).compile()
    compile_s = time.perf_counter() - start
    best = float("inf")
    for i in range(repeats):
        start = time.perf_counter()
        out = compiled(variables, images, jax.random.fold_in(key, i))
        jax.block_until_ready(out["members"])
        best = min(best, time.perf_counter() - start)
    members = np.asarray(out["members"])
    if members.shape != (batch, options.ensemble_size, size, size, 1):
        raise AssertionError(f"unexpected members shape {members.shape}")
    flops = forward_flops(model, variables, batch * options.ensemble_size, size, steps)
    return {"compile_s": round(compile_s, 2), "call_s": round(best, 4),
            "images_per_s": round(batch / best, 4), "s_per_image": round(best / batch, 4),
            **common.flops_columns(flops, best, str(config.model.dtype), "call"),
            **common.memory_columns(compiled)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated architectures")
    p.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    p.add_argument("--image_size", type=int, default=0, help="0: the preset's (32 or 256 px)")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--ddpm_steps", type=int, default=1000, help="T; DDPM runs the full chain")
    p.add_argument("--ddim_steps", type=int, default=50)
    p.add_argument("--samplers", default="ddpm,ddim")
    p.add_argument("--batch", type=int, default=1, help="images per call (global)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = common.parse_args(p)
    device = jax.devices()[0]
    results = []
    for arch in args.archs.split(","):
        for sampler in args.samplers.split(","):
            steps = 0 if sampler == "ddpm" else args.ddim_steps
            try:
                config = common.load_config(arch, args.preset, mode="diffusion",
                                            size=args.image_size or None, dtype=args.dtype)
            except (KeyError, ValueError, FileNotFoundError) as e:
                print(f"{arch:10s} skipped: its config cannot be built here ({e})", flush=True)
                break
            config.diffusion.num_timesteps = args.ddpm_steps
            options = predictors.SamplingOptions(
                ensemble_size=args.members, sampler=sampler, sampling_steps=steps, eta=0.0,
                clip_x0=bool(config.diffusion.clip_x0))
            timing = time_sampler(config, options, args.batch, steps or args.ddpm_steps,
                                  args.repeats)
            row = {"arch": arch, "preset": args.preset, "image_size": config.data.image_size,
                   "sampler": sampler, "steps": steps or args.ddpm_steps,
                   "members": args.members, "batch": args.batch, "dtype": args.dtype,
                   "device": device.device_kind, **timing}
            results.append(row)
            common.append_jsonl(args.jsonl, row, "sampling")
            print(f"{arch:10s} {args.preset:5s} {row['image_size']:4d}px {sampler:4s} "
                  f"{row['steps']:5d} steps x {args.members} members, batch {args.batch}: "
                  f"compile {timing['compile_s']:7.1f} s | {timing['call_s']:8.2f} s/call | "
                  f"{timing['images_per_s']:8.3f} images/s | {timing['s_per_image']:8.2f} s/image"
                  f" | MFU {common.fmt(timing['mfu'], '.1%')} | "
                  f"{common.fmt(timing['compiled_gb'], '.2f')} GB, process peak "
                  f"{common.fmt(timing['process_peak_gb'], '.2f')} GB", flush=True)
    common.print_json(results, "sampling")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
