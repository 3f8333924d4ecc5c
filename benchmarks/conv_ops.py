r"""Where a CPU train step spends its convolution time: forward, input gradient and weight
gradient of one 3x3 convolution, and GroupNorm forward+backward, at the tiny presets' shapes.

    python benchmarks/conv_ops.py                 # XLA only
    python benchmarks/conv_ops.py --torch         # beside torch (pip install torch), same threads

Each figure is the best of `--repeats` calls of one jitted operation (XLA, NHWC as jdiffseg runs
it) or one eager call (torch, NCHW as the authors' code runs it, `torch.set_num_threads` set to
the machine's cores). The weight gradient is what XLA:CPU is slowest at: it runs as a
convolution whose contracted feature axis is the batch (4 here), with both operands transposed
first. One JSON line per row follows the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np

from jdiffseg.runtime import cpu_defaults

# (batch, size, in channels, out channels): the tiny EnsemDiff/SegDiff UNet at 64 px input.
SHAPES = ((4, 64, 32, 32), (4, 64, 96, 32), (4, 32, 64, 64), (4, 32, 128, 64), (4, 16, 64, 64))
GROUPS = 32


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `fn()` over `repeats` calls after one warm-up, in ms."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def xla_row(shape: tuple[int, int, int, int], repeats: int) -> dict[str, float]:
    """XLA timings of the jdiffseg code paths (conv_general_dilated, models.group_norm)."""
    import jax
    import jax.numpy as jnp

    from jdiffseg.models.group_norm import group_norm

    n, s, cin, cout = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, s, s, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.1, jnp.float32)
    dy = jnp.asarray(rng.normal(size=(n, s, s, cout)), jnp.float32)

    def conv(x_: jax.Array, w_: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(
            x_, w_, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def input_grad(x_: jax.Array, w_: jax.Array, dy_: jax.Array) -> jax.Array:
        return jax.vjp(lambda a: conv(a, w_), x_)[1](dy_)[0]

    def weight_grad(x_: jax.Array, w_: jax.Array, dy_: jax.Array) -> jax.Array:
        return jax.vjp(lambda a: conv(x_, a), w_)[1](dy_)[0]

    def norm_fwd_bwd(x_: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
        return jax.vjp(lambda a: group_norm(a, scale, bias, GROUPS), x_)[1](x_)[0]

    def run(f: Callable[..., jax.Array], *args: jax.Array) -> float:
        jitted = jax.jit(f)  # arguments, not closed-over constants, or XLA folds the work away
        return best_ms(lambda: jax.block_until_ready(jitted(*args)), repeats)

    return {"fwd": run(conv, x, w), "dx": run(input_grad, x, w, dy),
            "dw": run(weight_grad, x, w, dy),
            "gn": run(norm_fwd_bwd, x, jnp.ones(cin), jnp.zeros(cin))}


def torch_row(shape: tuple[int, int, int, int], repeats: int) -> dict[str, float]:
    """torch timings of nn.Conv2d(padding=1) and nn.GroupNorm, gradients by autograd."""
    import torch

    n, s, cin, cout = shape
    x = torch.randn(n, cin, s, s, requires_grad=True)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
    norm = torch.nn.GroupNorm(GROUPS, cin)
    y = conv(x)
    dy = torch.randn_like(y)
    z = norm(x)

    def fwd() -> None:
        with torch.no_grad():
            conv(x)

    return {
        "fwd": best_ms(fwd, repeats),
        "dx": best_ms(lambda: torch.autograd.grad(y, x, dy, retain_graph=True), repeats),
        "dw": best_ms(lambda: torch.autograd.grad(y, conv.weight, dy, retain_graph=True),
                      repeats),
        "gn": best_ms(lambda: (norm(x), torch.autograd.grad(z, x, x, retain_graph=True)),
                      repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch", action="store_true", help="time torch beside XLA")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--plain_xla", action="store_true", help=cpu_defaults.PLAIN_HELP)
    args = parser.parse_args()
    print(cpu_defaults.configure(args.plain_xla))
    if args.torch:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ops = ("fwd", "dx", "dw", "gn")
    head = "".join(f"{'xla ' + o:>9}" for o in ops)
    if args.torch:
        head += "".join(f"{'torch ' + o:>10}" for o in ops)
    print(f"{'batch,px,cin,cout':<19}{head}   (ms)")
    rows = []
    for shape in SHAPES:
        row = {"shape": shape, "xla": xla_row(shape, args.repeats)}
        line = "".join(f"{row['xla'][o]:>9.2f}" for o in ops)
        if args.torch:
            row["torch"] = torch_row(shape, args.repeats)
            line += "".join(f"{row['torch'][o]:>10.2f}" for o in ops)
        print(f"{','.join(map(str, shape)):<19}{line}", flush=True)
        rows.append(row)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
