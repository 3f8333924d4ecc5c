r"""Train-step speed per architecture preset and image size: ms/step, images/s and, on GPU, MFU.

    python benchmarks/train_step.py                                  # tiny presets, 64 and 256 px
    python benchmarks/train_step.py --presets=paper --batch_size=8 --dtype=bfloat16   # on a GPU

The step is the real one (`jdiffseg.training.train.make_train_step`, jitted over all devices
with the state donated) on random data. GFLOP per (global) step come from the compiled step's
`cost_analysis()`; MFU is FLOPs per second over the devices' dense peak for the compute dtype
(known GPUs only, `common.PEAK_FLOPS`). Memory: "GB" is what the compiled step needs per
device (`memory_analysis()`: arguments, outputs less the donated state, temporaries), "peak GB"
the allocator's high-water mark of the whole process so far (GPU only; it cannot be reset, so
it covers earlier rows too). One JSON line per row goes to stdout after the table.
"""

from __future__ import annotations

import argparse
import time

import common
import jax
import numpy as np

from jdiffseg.runtime import sharding

ARCHS = ("ensemdiff", "segdiff", "medsegdiff", "nnunet")


def bench(arch: str, preset: str, size: int, batch: int, dtype: str, remat: bool, steps: int
          ) -> dict:
    """Times `steps` train steps after one warm-up step."""
    config = common.load_config(arch, preset, size=size, batch=batch, dtype=dtype, remat=remat)
    parts = common.train_step(config)
    state = jax.jit(parts.init, out_shardings=parts.state_shardings)(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch_data = jax.device_put(
        {"image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
         "mask": (rng.uniform(size=(batch, size, size, 1)) > 0.5).astype(np.float32)},
        sharding.batch_sharding(parts.mesh))
    t0 = time.perf_counter()
    compiled = parts.step.lower(state, batch_data).compile()
    compile_s = time.perf_counter() - t0
    flops = common.compiled_flops(compiled)
    state, metrics = compiled(state, batch_data)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch_data)
    jax.block_until_ready(metrics)
    sec = (time.perf_counter() - t0) / steps
    return {
        "arch": arch, "preset": preset, "size": size, "batch": batch, "dtype": dtype,
        "remat": remat, "device": common.device_tag(),
        "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(parts.abstract_state.params))),
        "compile_s": round(compile_s, 2), "ms_per_step": round(1e3 * sec, 2),
        "images_per_s": round(batch / sec, 2),
        **common.flops_columns(flops, sec, dtype, "step"),
        **common.memory_columns(compiled),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--presets", default="tiny")
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--batch_size", type=int, default=4, help="global batch")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--remat", action="store_true", help="set config.model.remat")
    parser.add_argument("--steps", type=int, default=5)
    args = common.parse_args(parser)
    rows = []
    header = f"{'arch':<11}{'preset':<7}{'px':>5}{'batch':>6}{'params':>12}{'ms/step':>10}"
    print(header + f"{'img/s':>9}{'GFLOP':>9}{'MFU':>7}{'GB':>8}{'peak GB':>9}")
    for arch in args.archs.split(","):
        for preset in args.presets.split(","):
            for size in map(int, args.sizes.split(",")):
                r = bench(arch, preset, size, args.batch_size, args.dtype, args.remat,
                          args.steps)
                rows.append(r)
                common.append_jsonl(args.jsonl, r, "train_step")
                print(f"{arch:<11}{preset:<7}{size:>5}{r['batch']:>6}{r['params']:>12,}"
                      f"{r['ms_per_step']:>10.1f}{r['images_per_s']:>9.1f}"
                      f"{common.fmt(r['gflops_per_step'], '.1f'):>9}"
                      f"{common.fmt(r['mfu'], '.1%'):>7}{common.fmt(r['compiled_gb'], '.2f'):>8}"
                      f"{common.fmt(r['process_peak_gb'], '.2f'):>9}", flush=True)
    common.print_json(rows, "train_step")


if __name__ == "__main__":
    main()
