"""Names of the guided-diffusion UNet (and SegDiff's RRDB) parameters in PyTorch.

Our Flax modules use the PyTorch names where they can; the differences are regular:
block lists are flattened (``input_blocks_3_1`` ↔ ``input_blocks.3.1``), the layers of
``nn.Sequential`` containers are named (``in_norm`` ↔ ``in_layers.0``), and parameters are
``kernel``/``scale`` instead of ``weight``.
"""

from __future__ import annotations

import re

from jdiffseg.models.importers.torch_state import Path

_BLOCK = re.compile(r"^(input_blocks|output_blocks|middle_block|RRDB_trunk)_(\d+(?:_\d+)*)$")
_RESBLOCK = {
    "in_norm": "in_layers.0",
    "in_conv": "in_layers.2",
    "emb_proj": "emb_layers.1",
    "out_norm": "out_layers.0",
    "out_conv": "out_layers.3",
    "skip": "skip_connection",
}
_HEAD = {"out_norm": "out.0", "out_conv": "out.2"}
_TIME_EMBED = {"dense0": "0", "dense1": "2"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def torch_key(path: Path) -> str:
    """The PyTorch key of a parameter of our `UNet` or `RRDBNet`, given its path in that module.

    >>> torch_key(("input_blocks_1_0", "in_norm", "scale"))
    'input_blocks.1.0.in_layers.0.weight'
    """
    *modules, leaf = path
    parts = []
    for i, name in enumerate(modules):
        block = _BLOCK.match(name)
        if block:
            parts.append(f"{block[1]}.{block[2].replace('_', '.')}")
        elif i == 0 and name in _HEAD:
            parts.append(_HEAD[name])
        elif i == 1 and modules[0] == "time_embed":
            parts.append(_TIME_EMBED[name])
        elif i > 0 and name in _RESBLOCK:
            parts.append(_RESBLOCK[name])
        else:
            parts.append(name)
    parts.append(_LEAF[leaf])
    return ".".join(parts)
