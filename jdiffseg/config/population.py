"""Populations: K replicas of one run trained together, differing in seed and in values that do
not change shapes or the compiled graph.

    --config.train.population=3                        # seeds seed, seed+1, seed+2
    --config.train.population_overrides="seed=0,1,2;train.lr=1e-4,3e-4,1e-3"
    --config.train.population_overrides='{"train.lr": [1e-4, 3e-4, 1e-3]}'   # JSON works too

Each entry of `population_overrides` is a dotted key and one value per replica (values are
JSON: numbers, strings, lists). Without a `seed` entry replica k gets `seed + k`. Replica k is
the config `replica_config(config, k)`: the base with its values, and a population of one; it
is what an ordinary run with the same seed and values would train.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from jdiffseg.config import parsing

# Keys a population may vary: traced per replica, so the compiled step is the same for all.
POPULATION_KEYS = (
    "seed",
    "train.lr",
    "train.weight_decay",
    "train.ema_decay",
    "train.cal_loss_weight",
    "diffusion.t_min",
    "diffusion.t_max",
    "diffusion.timestep_weights",
)
DATA_ORDERS = ("shared", "per_replica")
WHERE = "config.train.population_overrides"


def size(config: ml_collections.ConfigDict) -> int:
    """K, the number of replicas (>= 1)."""
    k = int(config.train.population)
    if k < 1:
        raise ValueError(f"config.train.population={k} must be >= 1")
    return k


def parse_overrides(text: str) -> dict[str, list[Any]]:
    """`"key=v1,v2;key=..."` or a JSON object `{"key": [v1, v2]}` -> {key: [values]}."""
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{WHERE}: cannot parse JSON {text!r}: {e}") from e
        if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
            raise ValueError(f"{WHERE}: JSON must map keys to lists of values, got {text!r}")
        return {str(k): list(v) for k, v in raw.items()}
    return {key: [_value(v.strip()) for v in _split_top_level(values)]
            for key, values in parsing.key_value_items(text, ";", f"{WHERE}:", "key=v1,v2,...")}


def _split_top_level(text: str) -> list[str]:
    """Splits at commas outside brackets, so list values (`[1,2],[3,4]`) stay whole."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def format_overrides(values: dict[str, list[Any]]) -> str:
    """Per-replica values as `population_overrides` text ("key=v1,v2;..."), read back the same."""
    def text(v: Any) -> str:
        return json.dumps(list(v) if isinstance(v, tuple) else v, separators=(",", ":"))

    return ";".join(f"{k}=" + ",".join(text(v) for v in vs) for k, vs in sorted(values.items()))


def check_key(key: str) -> None:
    """Raises ValueError naming `key` when a population may not vary it."""
    if key not in POPULATION_KEYS:
        raise ValueError(
            f"{WHERE}: {key!r} would change shapes or the compiled graph, so replicas cannot "
            f"differ in it; a population may vary only {', '.join(POPULATION_KEYS)}"
        )


def replica_values(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """Each replica's own values of the population keys (always with its 'seed')."""
    k = size(config)
    overrides = parse_overrides(config.train.population_overrides)
    for key, values in overrides.items():
        check_key(key)
        if len(values) != k:
            raise ValueError(
                f"{WHERE}: {key!r} has {len(values)} values for config.train.population={k}"
            )
    order = config.train.population_data
    if order not in DATA_ORDERS:
        raise ValueError(f"config.train.population_data={order!r} is not one of {DATA_ORDERS}")
    seeds = overrides.get("seed", [int(config.seed) + i for i in range(k)])
    out = [{"seed": int(seeds[i])} for i in range(k)]
    for key, values in overrides.items():
        if key != "seed":
            for i in range(k):
                out[i][key] = tuple(values[i]) if isinstance(values[i], list) else values[i]
    return out


def replica_config(config: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
    """Replica `k` as an ordinary run's config (a population of one with its own values)."""
    values = replica_values(config)
    if not 0 <= k < len(values):
        raise ValueError(f"replica {k} does not exist; the population has {len(values)}")
    out = parsing.from_json(parsing.to_json(config))
    parsing.update(out, values[k])
    parsing.update(out, {"train.population": 1, "train.population_overrides": "",
                         "train.population_data": "shared"})
    return out


def replica_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
    """`replica_config(config, k)` for every replica."""
    return [replica_config(config, k) for k in range(size(config))]
