r"""Populations: images/s of K replicas trained in one compiled step against K single runs
trained one after another (the same per-replica batch and step count).

    python benchmarks/population.py                        # tiny preset, 32 px, K = 1, 2, 4
    python benchmarks/population.py --presets=tiny,paper --sizes=64 --population=1,4,8  # GPU

The population step is the real one (`jdiffseg.training.train.make_population_step`, jitted
with the state donated); "sequential" is K times the single run's step time (one compiled
step reused, as K separate runs would each compile their own). Images/s count every replica's
images. GFLOP come from the compiled step's `cost_analysis()`; MFU (known GPUs only) is FLOPs
per second over the devices' dense peak. One JSON line per row goes to stdout after the table.
"""

from __future__ import annotations

import argparse
import time

import common
import jax
import numpy as np

from jdiffseg.config import population
from jdiffseg.models import build_model
from jdiffseg.runtime import sharding
from jdiffseg.training import optim, train


def _time(step, state, batch, steps: int) -> tuple[float, float | None]:
    compiled = step.lower(state, batch).compile()
    flops = common.compiled_flops(compiled)
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t0) / steps, flops


def bench(preset: str, size: int, batch: int, k: int, steps: int) -> dict:
    """Seconds per step of a K-replica population and of one single run."""
    config = common.load_config("ensemdiff", preset, size=size, batch=batch)
    rng = np.random.default_rng(0)
    data = {"image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
            "mask": (rng.uniform(size=(batch, size, size, 1)) > 0.5).astype(np.float32)}
    mesh = sharding.make_mesh()
    data = jax.device_put(data, sharding.batch_sharding(mesh))
    single = common.train_step(config)
    state = jax.jit(single.init, out_shardings=single.state_shardings)(jax.random.key(0))
    single_s, single_flops = _time(single.step, state, data, steps)
    with config.unlocked():
        config.train.population = k
    replicas = population.replica_configs(config)
    model = build_model(config.model, image_channels=3)
    tx = optim.make_optimizer(config.train)
    init = jax.vmap(train.init_train_state(config, model, tx, (batch, size, size, 3)))
    keys = jax.random.split(jax.random.key(0), k)
    abstract = jax.eval_shape(init, keys)
    shardings = sharding.population_shardings(abstract, mesh)
    pop_state = jax.jit(init, out_shardings=shardings)(keys)
    step = train.jit_train_step(train.make_population_step(config, model, replicas), shardings,
                                mesh)
    pop_s, pop_flops = _time(step, pop_state, data, steps)
    return {
        "preset": preset, "size": size, "batch": batch, "population": k,
        "device": common.device_tag(),
        "population_ms_per_step": round(1e3 * pop_s, 2),
        "sequential_ms_per_step": round(1e3 * k * single_s, 2),
        "population_images_per_s": round(k * batch / pop_s, 2),
        "sequential_images_per_s": round(batch / single_s, 2),
        "speedup": round(k * single_s / pop_s, 3),
        **common.flops_columns(pop_flops, pop_s, "float32", "step"),
        "single_gflops_per_step": common.rounded(single_flops, 3, 1e9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny")
    parser.add_argument("--sizes", default="32")
    parser.add_argument("--batch_size", type=int, default=4, help="per replica")
    parser.add_argument("--population", default="1,2,4", help="values of K")
    parser.add_argument("--steps", type=int, default=5)
    args = common.parse_args(parser)
    rows = []
    print(f"{'preset':<7}{'px':>5}{'batch':>6}{'K':>4}{'pop img/s':>11}{'seq img/s':>11}"
          f"{'speedup':>9}{'MFU':>7}")
    for preset in args.presets.split(","):
        for size in map(int, args.sizes.split(",")):
            for k in map(int, args.population.split(",")):
                r = bench(preset, size, args.batch_size, k, args.steps)
                rows.append(r)
                common.append_jsonl(args.jsonl, r, "population")
                print(f"{preset:<7}{size:>5}{r['batch']:>6}{k:>4}"
                      f"{r['population_images_per_s']:>11.1f}{r['sequential_images_per_s']:>11.1f}"
                      f"{r['speedup']:>9.2f}{common.fmt(r['mfu'], '.1%'):>7}", flush=True)
    common.print_json(rows, "population")


if __name__ == "__main__":
    main()
