"""Reading PyTorch state dicts and assigning them to Flax parameter trees.

A state dict is read from a ``.pt``/``.pth`` file (with torch, imported only then), from an
``.npz`` archive, or taken as a mapping of arrays (numpy arrays or torch tensors). The
``module.`` prefix that ``DistributedDataParallel`` adds is stripped.

`assign` fills a parameter template from a state dict through a function giving the torch
key of every Flax parameter path, converting layouts (conv ``OIHW → HWIO``, linear
``(out, in) → (in, out)``, 1x1 ``Conv1d`` ``(out, in, 1) → (in, out)``). It is strict: any
unknown (unused), missing or mis-shaped key stops it with a `StateDictError` listing them all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

DDP_PREFIX = "module."
# Flax leaf name -> PyTorch parameter or buffer name (BatchNorm statistics included).
TORCH_LEAF = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}
_LIST_LIMIT = 50

Path = tuple[str, ...]


class StateDictError(ValueError):
    """A state dict does not match the model: lists unknown, missing and mis-shaped keys."""

    def __init__(
        self,
        source: str,
        unknown: list[str],
        missing: list[str],
        misshaped: list[str],
    ) -> None:
        self.unknown, self.missing, self.misshaped = unknown, missing, misshaped
        parts = [f"state dict {source} does not match the model:"]
        for title, keys in (("unknown", unknown), ("missing", missing), ("mis-shaped", misshaped)):
            if keys:
                shown = keys[:_LIST_LIMIT]
                more = f" ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
                parts.append(f"  {len(keys)} {title} key(s): {', '.join(shown)}{more}")
        super().__init__("\n".join(parts))


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch need not be importable otherwise
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)


def _unwrap(obj: Any, source: str) -> Mapping[str, Any]:
    """Accepts a bare state dict or a checkpoint dict holding one under a common key."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source}: expected a state dict (mapping), got {type(obj).__name__}")
    for key in ("state_dict", "model_state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    return obj


def read_state_dict(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A state dict as ``{key: float32/int numpy array}`` with any ``module.`` prefix removed."""
    if isinstance(source, Mapping):
        raw, name = _unwrap(source, "<mapping>"), "<mapping>"
    else:
        name = os.fspath(source)
        if not os.path.exists(name):
            raise FileNotFoundError(f"no state dict at {name}")
        if name.endswith(".npz"):
            with np.load(name) as archive:
                raw = {k: archive[k] for k in archive.files}
        else:
            try:
                import torch  # optional: only needed to read .pt files
            except ImportError as err:
                raise ImportError(
                    f"reading {name} needs torch (pip install 'jdiffseg[torch]'); or convert it "
                    "to .npz with numpy arrays first"
                ) from err
            raw = _unwrap(torch.load(name, map_location="cpu", weights_only=True), name)
    return {strip_prefix(k): _to_numpy(v) for k, v in raw.items()}


def strip_prefix(key: str, prefix: str = DDP_PREFIX) -> str:
    """``key`` without a leading ``prefix`` (``module.`` by default)."""
    return key[len(prefix) :] if key.startswith(prefix) else key


def convert(leaf_name: str, value: np.ndarray) -> np.ndarray:
    """PyTorch layout → Flax layout for a parameter named ``leaf_name`` on the Flax side."""
    if leaf_name != "kernel":
        return value
    if value.ndim == 4:  # Conv2d (out, in, kh, kw) -> (kh, kw, in, out)
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 3 and value.shape[-1] == 1:  # 1x1 Conv1d (out, in, 1) -> (in, out)
        return value[:, :, 0].T
    if value.ndim == 2:  # Linear (out, in) -> (in, out)
        return value.T
    return value


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
    """``{path tuple: leaf}`` of a nested mapping."""
    out: dict[Path, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
    """Inverse of `flatten`."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def assign(
    state: Mapping[str, np.ndarray],
    template: Any,
    torch_key: Callable[[Path], str],
    source: str = "<mapping>",
) -> dict[str, Any]:
    """Fills ``template`` (params tree of arrays or shape structs) from ``state``.

    ``torch_key(path)`` names the torch key of each Flax parameter. Every template leaf must
    find a key of the right shape and every state key must be used, else `StateDictError`.
    """
    flat = flatten(template)
    used: set[str] = set()
    missing, misshaped = [], []
    out: dict[Path, np.ndarray] = {}
    for path, leaf in flat.items():
        key = torch_key(path)
        if key not in state:
            missing.append(f"{key} (for {'/'.join(path)})")
            continue
        used.add(key)
        value = convert(path[-1], state[key])
        if tuple(value.shape) != tuple(leaf.shape):
            misshaped.append(
                f"{key} {tuple(state[key].shape)} (for {'/'.join(path)} {tuple(leaf.shape)})"
            )
            continue
        out[path] = np.asarray(value, dtype=leaf.dtype)
    unknown = sorted(set(state) - used)
    if unknown or missing or misshaped:
        raise StateDictError(source, unknown, missing, misshaped)
    return unflatten(out)
