"""Completing a `config.data` section with the defaults of the config tree."""

from __future__ import annotations

import ml_collections

from jdiffseg.config import schema


def data_config_defaults() -> ml_collections.ConfigDict:
    """The `config.data` section with its defaults (from the one tree, `jdiffseg.config.schema`)."""
    return schema.base_config().data


def resolve(data: ml_collections.ConfigDict,
            defaults: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """`data` completed with the defaults for keys it lacks or leaves None (placeholders)."""
    out = data_config_defaults() if defaults is None else defaults
    for key, value in data.items():
        if isinstance(value, ml_collections.ConfigDict) and key in out:
            out[key] = resolve(value, out[key])
        elif value is not None:
            out[key] = value
    return out
