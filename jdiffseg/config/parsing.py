"""Reading config files and `key=value` arguments, overriding keys, and JSON round trips.

A config file exposes `get_config(arg)`; `arg` is the text after the colon in
`--config=configs/ensemdiff.py:dataset=monuseg,mode=diffusion`. It is parsed here so every
config file accepts the same syntax and rejects unknown keys with the same message.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `"k1=v1,k2=v2"` into a ConfigDict whose keys must be among `defaults`.

    Values are converted to the type of the default (int, float, bool, str).
    """
    out = ml_collections.ConfigDict(dict(defaults))
    for key, value in key_value_items(arg or "", ",", "config argument", "key=value"):
        if key not in defaults:
            raise KeyError(
                f"unknown config argument {key!r} in {arg!r}; known: {', '.join(sorted(defaults))}"
            )
        out[key] = _convert(value, defaults[key], key)
    return out


def key_value_items(text: str, separator: str, what: str, form: str
                    ) -> list[tuple[str, str]]:
    """`text` split at `separator` into stripped (key, value) pairs, blank items skipped; an
    item without '=' is a ValueError naming `what`, the expected `form` and the whole text."""
    pairs = []
    for item in text.split(separator):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"{what} {item!r} is not of the form {form} (in {text!r})")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value.strip()))
    return pairs


def literal_overrides(items: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-3", "data.variant=nuclei"]` as `{key: value}`: each value a Python
    literal where it parses as one (numbers, tuples, booleans), else the text itself; an item
    without '=' is a ValueError naming it."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form KEY=VALUE")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def _convert(value: str, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"config argument {key}={value!r} is not a boolean")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def load_config_file(path: str | os.PathLike[str], arg: str | None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, locked, as `--config=path:arg` gives it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_jdiffseg_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.lock()
    return config


def update(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Sets dotted keys (`"train.lr"`) on a locked config; an unknown key raises naming it."""
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for name in parents:
            if name not in node:
                raise KeyError(f"unknown config key {dotted!r} (no section {name!r})")
            node = node[name]
        if leaf not in node:
            raise KeyError(f"unknown config key {dotted!r}")
        node[leaf] = value


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as indented JSON (tuples become lists)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Rebuilds a locked config written by `to_json`; lists become tuples, as in the files."""

    def tuples(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        if isinstance(x, list):
            return tuple(tuples(v) for v in x)
        return x

    config = ml_collections.ConfigDict(tuples(json.loads(text)))
    config.lock()
    return config


def flag_text(value: Any) -> str:
    """A config value as `--config.k=` text that ml_collections parses back (tuples `(a,b,)`)."""
    if isinstance(value, list | tuple):
        return "(" + ",".join(flag_text(x) for x in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value) if isinstance(value, float) else str(value)


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
    """`--config.k=v` command-line flags for dotted overrides."""
    return [f"--config.{k}={flag_text(v)}" for k, v in overrides.items()]
