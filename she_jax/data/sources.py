"""Where a run's records come from: the config's `data` section -> {split: [record, ...]}.

Sources (config.data.source):
  'shopworld'  the embedded world generated in-process from `data.world` (a WorldConfig
               preset) plus `data.world_overrides`; cached as JSONL under the cache dir so
               that a chain of stages pays for generation once.
  'tfds'       the same world through the `shop_relevance` TFDS builder (array_record,
               read with tfds.data_source; built into `data.tfds_dir` on first use).
  'jsonl'      files in the record schema: `data.files` maps split name -> path.
  'esci'       Amazon ESCI shopping-queries files in `data.esci_dir`, cut into train/dev/test
               splits by query (see `_split_esci`).
Rows a reader skips (on_bad_row='skip') are counted and logged, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from she_jax.data import readers

CACHE_ENV = "SHE_JAX_CACHE"


def cache_dir() -> str:
    """$SHE_JAX_CACHE, else ~/.cache/she_jax: generated worlds and trained tokenizers."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "she_jax")


def data_config() -> ml_collections.ConfigDict:
    """The `data` section every trainer reads (each key documented)."""
    c = ml_collections.ConfigDict()
    c.source = "shopworld"  # 'shopworld' | 'tfds' | 'jsonl' | 'esci'
    c.world = "tiny"  # ShopWorld preset: 'tiny' | 'small' | 'full'
    # WorldConfig fields to override, e.g. {'sft_size': 5000, 'seed': 1}.
    c.world_overrides = ml_collections.ConfigDict()
    c.tfds_dir = ""  # source='tfds': data_dir of the builder ('' -> <cache>/tfds)
    # source='jsonl': split name -> path, e.g. {'sft': 'train.jsonl', 'test_head': 'test.jsonl'}.
    c.files = ml_collections.ConfigDict()
    c.esci_dir = ""  # source='esci': folder with the ESCI examples/products files
    c.esci_locale = "us"  # source='esci': product_locale kept ('' keeps all)
    c.on_bad_row = "error"  # readers: 'error' stops at a bad row; 'skip' skips and counts it
    c.max_examples_per_split = 0  # > 0 truncates every split (quick experiments)
    return c


def _world_config(data: ml_collections.ConfigDict):
    from she_jax.data.shopworld import WorldConfig

    overrides = dict(data.world_overrides) if data.get("world_overrides") else {}
    for key, value in overrides.items():
        if isinstance(value, list):
            overrides[key] = tuple(value)
    try:
        return WorldConfig.preset(data.world, **overrides)
    except TypeError as e:
        raise ValueError(f"config.data.world_overrides: {e}") from None


def _world_cache_path(world_config) -> str:
    blob = json.dumps(dataclasses.asdict(world_config), sort_keys=True).encode()
    digest = hashlib.sha256(blob).hexdigest()[:16]
    return os.path.join(cache_dir(), "shopworld", digest)


def _write_jsonl(path: str, records: Sequence[Mapping]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated cache behind


def shopworld_splits(world_config) -> dict[str, list[dict]]:
    """All ShopWorld splits for a WorldConfig, generated once and then read from the cache."""
    from she_jax.data.shopworld import SPLITS, generate_splits

    directory = _world_cache_path(world_config)
    paths = {split: os.path.join(directory, f"{split}.jsonl") for split in SPLITS}
    if all(os.path.exists(p) for p in paths.values()):
        return {split: readers.read_jsonl(path).records for split, path in paths.items()}
    logging.info("generating ShopWorld %s into %s", world_config, directory)
    splits = generate_splits(world_config)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "world_config.json"), "w") as f:
        json.dump(dataclasses.asdict(world_config), f, indent=1)
    for split, records in splits.items():
        _write_jsonl(paths[split], records)
    return splits


def _split_esci(records: list[dict], dev_fraction: float = 0.05,
                test_fraction: float = 0.1) -> dict[str, list[dict]]:
    """ESCI has no relevance CoT: a query-disjoint sft/rl/dev/test_head cut by query hash."""
    out: dict[str, list[dict]] = {"sft": [], "rl": [], "dev": [], "test_head": []}
    for record in records:
        h = int(hashlib.sha256(record["query"].encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        if h < test_fraction:
            out["test_head"].append(record)
        elif h < test_fraction + dev_fraction:
            out["dev"].append(record)
        else:
            out["sft" if h < 0.6 else "rl"].append(record)
    return out


def _log_skipped(what: str, result: readers.ReadResult) -> None:
    if result.skipped:
        logging.warning("%s: skipped bad rows %s", what, dict(result.skipped))


def load_splits(data: ml_collections.ConfigDict) -> dict[str, list[dict]]:
    """{split: records} for the config's data section (see the module docstring)."""
    source = data.source
    if source == "shopworld":
        splits = shopworld_splits(_world_config(data))
    elif source == "tfds":
        from she_jax.data import tfds_builder
        from she_jax.data.shopworld import SPLITS

        tfds_dir = data.tfds_dir or os.path.join(cache_dir(), "tfds")
        overrides = dict(data.world_overrides) if data.get("world_overrides") else None
        splits = {split: list(tfds_builder.load_split(split, data.world, tfds_dir, overrides))
                  for split in SPLITS}
    elif source == "jsonl":
        if not data.files:
            raise ValueError("config.data.files must map split names to JSONL paths "
                             "when config.data.source='jsonl'")
        splits = {}
        for split, path in dict(data.files).items():
            result = readers.read_jsonl(path, on_bad_row=data.on_bad_row)
            _log_skipped(path, result)
            splits[split] = result.records
    elif source == "esci":
        if not data.esci_dir:
            raise ValueError("config.data.esci_dir must be set when config.data.source='esci'")
        result = readers.read_esci(data.esci_dir, on_bad_row=data.on_bad_row,
                                   locale=data.esci_locale or None)
        _log_skipped(data.esci_dir, result)
        splits = _split_esci(result.records)
    else:
        raise ValueError(f"config.data.source={source!r}; expected one of "
                         "'shopworld', 'tfds', 'jsonl', 'esci'")
    if data.max_examples_per_split > 0:
        splits = {k: v[: data.max_examples_per_split] for k, v in splits.items()}
    return splits


def require_split(splits: Mapping[str, Any], name: str, key: str) -> Any:
    """splits[name], or an error naming the config key that should have provided it."""
    if name not in splits or len(splits[name]) == 0:
        raise ValueError(f"{key}: split {name!r} is missing or empty; available splits: "
                         f"{sorted(k for k, v in splits.items() if len(v))}")
    return splits[name]
