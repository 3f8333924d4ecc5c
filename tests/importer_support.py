"""PyTorch state dicts in the authors' key layout, from a hand-written description of their
``UNetModel``/``RRDBNet`` for a tiny config (below), not from the importers' own mapping."""

from __future__ import annotations

import numpy as np

EMB = 128  # 4 x 32 base channels

# The authors' modules for base 32, mult (1, 2), 1 res block, attention at factor 2,
# 3 image channels (+1 mask channel for EnsemDiff).
UNET_MODULES = [
    ("input_blocks.0.0", "conv", (None, 32, 3)),
    ("input_blocks.1.0", "res", (32, 32)),
    ("input_blocks.2.0.op", "conv", (32, 32, 3)),
    ("input_blocks.3.0", "res", (32, 64)),
    ("input_blocks.3.1", "attn", (64,)),
    ("middle_block.0", "res", (64, 64)),
    ("middle_block.1", "attn", (64,)),
    ("middle_block.2", "res", (64, 64)),
    ("output_blocks.0.0", "res", (128, 64)),
    ("output_blocks.0.1", "attn", (64,)),
    ("output_blocks.1.0", "res", (96, 64)),
    ("output_blocks.1.1", "attn", (64,)),
    ("output_blocks.1.2.conv", "conv", (64, 64, 3)),
    ("output_blocks.2.0", "res", (96, 32)),
    ("output_blocks.3.0", "res", (64, 32)),
    ("time_embed.0", "linear", (32, EMB)),
    ("time_embed.2", "linear", (EMB, EMB)),
    ("out.0", "norm", (32,)),
    ("out.2", "conv", (32, None, 3)),
]


def module_keys(prefix: str, kind: str, args: tuple) -> dict[str, tuple[int, ...]]:
    """PyTorch parameter names and shapes of one module."""
    if kind == "conv":
        cin, cout, k = args
        return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}
    if kind == "linear":
        cin, cout = args
        return {f"{prefix}.weight": (cout, cin), f"{prefix}.bias": (cout,)}
    if kind == "norm":
        return {f"{prefix}.weight": args, f"{prefix}.bias": args}
    if kind == "attn":
        (c,) = args
        return {
            **module_keys(f"{prefix}.norm", "norm", (c,)),
            f"{prefix}.qkv.weight": (3 * c, c, 1),
            f"{prefix}.qkv.bias": (3 * c,),
            f"{prefix}.proj_out.weight": (c, c, 1),
            f"{prefix}.proj_out.bias": (c,),
        }
    cin, cout = args  # res
    keys = {
        **module_keys(f"{prefix}.in_layers.0", "norm", (cin,)),
        **module_keys(f"{prefix}.in_layers.2", "conv", (cin, cout, 3)),
        **module_keys(f"{prefix}.emb_layers.1", "linear", (EMB, cout)),
        **module_keys(f"{prefix}.out_layers.0", "norm", (cout,)),
        **module_keys(f"{prefix}.out_layers.3", "conv", (cout, cout, 3)),
    }
    if cin != cout:
        keys.update(module_keys(f"{prefix}.skip_connection", "conv", (cin, cout, 1)))
    return keys


def unet_keys(in_channels: int, out_channels: int) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for prefix, kind, args in UNET_MODULES:
        args = tuple(in_channels if a is None and i == 0 else a for i, a in enumerate(args))
        args = tuple(out_channels if a is None else a for a in args)
        keys.update(module_keys(prefix, kind, args))
    return keys


def rrdb_keys(blocks: int, nf: int, gc: int, c_out: int) -> dict[str, tuple[int, ...]]:
    keys = module_keys("rrdb.conv_first", "conv", (3, nf, 3))
    for i in range(blocks):
        for r in (1, 2, 3):
            for j in range(1, 6):
                cout = nf if j == 5 else gc
                keys.update(
                    module_keys(
                        f"rrdb.RRDB_trunk.{i}.RDB{r}.conv{j}", "conv", (nf + (j - 1) * gc, cout, 3)
                    )
                )
    keys.update(module_keys("rrdb.trunk_conv", "conv", (nf, nf, 3)))
    keys.update(module_keys("rrdb.HRconv", "conv", (nf, nf, 3)))
    keys.update(module_keys("rrdb.conv_last", "conv", (nf, c_out, 3)))
    return keys


def random_state(keys: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in keys.items()}
