"""Where a run's records come from: the config's `data` section -> {split: [record, ...]}.

Sources (config.data.source):
  'shopworld'  the embedded world generated in-process from `data.world` (a WorldConfig
               preset) plus `data.world_overrides`; cached as JSONL under the cache dir so
               that a chain of stages pays for generation once.
  'tfds'       the same world through the `shop_relevance` TFDS builder (array_record,
               read with tfds.data_source; built into `data.tfds_dir` on first use).
  'jsonl'      files in the record schema: `data.files` maps split name -> path; every
               file is checked to exist and hold rows before any is read.
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
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from she_jax.data import readers

CACHE_ENV = "SHE_JAX_CACHE"


def cache_dir() -> str:
    """$SHE_JAX_CACHE, else ~/.cache/she_jax: generated worlds and trained tokenizers."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "she_jax")


def _placeholder_type(hint: Any) -> type:
    """The type a config placeholder for a WorldConfig field of type `hint` takes:
    `int | None` -> int, `tuple[float, ...]` -> tuple."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _placeholder_type(args[0])
    return origin or hint


def world_overrides_section() -> ml_collections.ConfigDict:
    """`data.world_overrides`: one key per WorldConfig field, each None (= the preset's value)
    until set, so that `--config.data.world_overrides.<field>=<value>` is a flag like any other."""
    from she_jax.data.shopworld import WorldConfig

    hints = typing.get_type_hints(WorldConfig)
    c = ml_collections.ConfigDict()
    for field in dataclasses.fields(WorldConfig):
        c[field.name] = placeholder(_placeholder_type(hints[field.name]))
    return c


def files_section() -> ml_collections.ConfigDict:
    """`data.files`: one key per ShopWorld split name, each None (no file) until set."""
    from she_jax.data.shopworld import SPLITS

    c = ml_collections.ConfigDict()
    for split in SPLITS:
        c[split] = placeholder(str)
    return c


def data_config() -> ml_collections.ConfigDict:
    """The `data` section every trainer reads (each key documented)."""
    c = ml_collections.ConfigDict()
    c.source = "shopworld"  # 'shopworld' | 'tfds' | 'jsonl' | 'esci'
    c.world = "tiny"  # ShopWorld preset: 'tiny' | 'small' | 'full'
    # WorldConfig fields replacing the preset's, e.g. --config.data.world_overrides.seed=1;
    # None keeps the preset's value.
    c.world_overrides = world_overrides_section()
    c.tfds_dir = ""  # source='tfds': data_dir of the builder ('' -> <cache>/tfds)
    # source='jsonl': split -> path, e.g. --config.data.files.sft=train.jsonl; unset splits
    # are absent. The dict form "--config.data.files={'sft': 'train.jsonl'}" also works (and
    # may name splits of any other name).
    c.files = files_section()
    c.esci_dir = ""  # source='esci': folder with the ESCI examples/products files
    c.esci_locale = "us"  # source='esci': product_locale kept ('' keeps all)
    c.on_bad_row = "error"  # readers: 'error' stops at a bad row; 'skip' skips and counts it
    c.max_examples_per_split = 0  # > 0 truncates every split (quick experiments)
    # A record too long for the run's buckets or model (checked for every split the run uses
    # before the first step, she_jax.data.checks): 'error' names it and stops; 'skip'
    # leaves it out (counted and logged); 'truncate' cuts its item title to fit.
    c.overlong = "error"
    return c


def world_overrides(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """The WorldConfig fields the config sets: the non-None entries of data.world_overrides
    (lists, as a config read back from JSON holds them, become tuples)."""
    overrides = data.get("world_overrides") or {}
    return {key: tuple(value) if isinstance(value, list) else value
            for key, value in dict(overrides).items() if value is not None}


def _world_config(data: ml_collections.ConfigDict):
    from she_jax.data.shopworld import WorldConfig

    try:
        return WorldConfig.preset(data.world, **world_overrides(data))
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


def jsonl_files(data: ml_collections.ConfigDict) -> dict[str, str]:
    """{split: path} of the splits data.files sets (a None or '' entry is not set)."""
    return {split: path for split, path in dict(data.get("files") or {}).items() if path}


def _jsonl_splits(data: ml_collections.ConfigDict) -> dict[str, list[dict]]:
    """Every file of data.files read, after checking up front that each exists and is not
    empty: a missing or empty file is named (split key and path) before any is read."""
    files = jsonl_files(data)
    if not files:
        raise ValueError("config.data.source='jsonl' needs at least one file: set "
                         "--config.data.files.<split>=PATH (e.g. --config.data.files.sft="
                         "train.jsonl)")
    for split, path in files.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.data.files.{split}: {path} does not exist")
        if os.path.getsize(path) == 0:
            raise ValueError(f"config.data.files.{split}: {path} is empty")
    splits = {}
    for split, path in files.items():
        result = readers.read_jsonl(path, on_bad_row=data.on_bad_row)
        _log_skipped(f"config.data.files.{split} ({path})", result)
        if not result.records and result.skipped:
            raise ValueError(f"config.data.files.{split}: {path} has no usable row: all "
                             f"{sum(result.skipped.values())} were skipped as bad "
                             f"({dict(result.skipped)})")
        if not result.records:
            raise ValueError(f"config.data.files.{split}: {path} is empty (blank lines only)")
        splits[split] = result.records
    return splits


def load_splits(data: ml_collections.ConfigDict) -> dict[str, list[dict]]:
    """{split: records} for the config's data section (see the module docstring)."""
    source = data.source
    if source == "shopworld":
        splits = shopworld_splits(_world_config(data))
    elif source == "tfds":
        from she_jax.data import tfds_builder
        from she_jax.data.shopworld import SPLITS

        tfds_dir = data.tfds_dir or os.path.join(cache_dir(), "tfds")
        overrides = world_overrides(data) or None
        splits = {split: list(tfds_builder.load_split(split, data.world, tfds_dir, overrides))
                  for split in SPLITS}
    elif source == "jsonl":
        splits = _jsonl_splits(data)
    elif source == "esci":
        if not data.esci_dir:
            raise ValueError("config.data.esci_dir must be set when config.data.source='esci'")
        result = readers.read_esci(data.esci_dir, on_bad_row=data.on_bad_row,
                                   locale=data.esci_locale or None)
        _log_skipped(data.esci_dir, result)
        if not result.records:
            raise ValueError(f"config.data.esci_dir: {data.esci_dir} holds no usable example "
                             f"(locale {data.esci_locale!r}: {result.filtered} filtered out, "
                             f"bad rows skipped: {dict(result.skipped)})")
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
