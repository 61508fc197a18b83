"""The `shop_relevance` TFDS dataset: ShopWorld records stored as array_record, no TensorFlow.

Build and read (nothing is downloaded: the data is generated from the world's seed):

    builder = build_dataset('tiny', data_dir)            # download_and_prepare(array_record)
    records = load_split('rl', 'tiny', data_dir)         # random-access, decoded records
    # or with tfds directly, once built (importing this module registers the builder):
    source = tfds.data_source('shop_relevance/tiny', data_dir=data_dir)['rl']

Configs tiny / small / full are the ShopWorld WorldConfig presets of those names; a
`ShopRelevanceConfig(name=..., world=..., world_overrides=...)` builds any other world.
Splits are ShopWorld's. Stored features are the record schema: the strings as Text, label as
ClassLabel over special_tokens.LABELS (class id = index, as everywhere in she_jax),
annotations as a JSON Text ('null' when absent) and cot as Text ('' when absent; a real CoT
is never empty). Examples keep the generator's order (shuffling disabled), so split[i] is the
i-th record ShopWorld generated. Everything here works without TensorFlow: tfds writes
array_record with its own writer and `as_data_source` reads it through array_record.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator, Mapping, Sequence

import tensorflow_datasets as tfds
from etils import epath

from she_jax import special_tokens as st

NAME = "shop_relevance"
FILE_FORMAT = "array_record"
SCHEMA_FIELDS = ("id", "query", "item_title", "label", "query_type", "popularity",
                 "annotations", "cot")
_TEXT_FIELDS = ("id", "query", "item_title", "query_type", "popularity")


@dataclasses.dataclass(eq=False)
class ShopRelevanceConfig(tfds.core.BuilderConfig):
    """world: a ShopWorld WorldConfig preset name; world_overrides: ((field, value), ...)
    replacing preset fields (e.g. a smaller world for tests)."""
    world: str = "tiny"
    world_overrides: tuple[tuple[str, Any], ...] = ()

    def world_config(self):
        from she_jax.data import shopworld
        return shopworld.WorldConfig.preset(self.world, **dict(self.world_overrides))


def encode_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A schema record -> the stored feature dict."""
    missing = [f for f in SCHEMA_FIELDS if f not in record]
    if missing:
        raise ValueError(f"record {record.get('id')!r} lacks fields {missing}")
    example = {f: record[f] for f in _TEXT_FIELDS}
    example["label"] = st.LABELS.index(record["label"])
    example["annotations"] = json.dumps(record["annotations"], ensure_ascii=False)
    example["cot"] = record["cot"] or ""
    return example


def decode_example(example: Mapping[str, Any]) -> dict[str, Any]:
    """A stored example as read from a data source (bytes, int label) -> a schema record."""

    def text(value) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    record = {f: text(example[f]) for f in _TEXT_FIELDS}
    record["label"] = st.LABELS[int(example["label"])]
    record["annotations"] = json.loads(text(example["annotations"]))
    record["cot"] = text(example["cot"]) or None
    return {f: record[f] for f in SCHEMA_FIELDS}


class ShopRelevance(tfds.core.GeneratorBasedBuilder):
    """ShopWorld query-item relevance pairs with CoT and step annotations."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    BUILDER_CONFIGS = [
        ShopRelevanceConfig(name=name, world=name, description=f"ShopWorld '{name}' preset.")
        for name in ("tiny", "small", "full")
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds' default probes the package through `importlib_resources` (not a dependency
        # here) before falling back to this very file; there is nothing else to find.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly (not dataset_info_from_configs): that one reads metadata files
        # from a tfds-style package folder this module does not have.
        features = {f: tfds.features.Text() for f in (*_TEXT_FIELDS, "annotations", "cot")}
        features["label"] = tfds.features.ClassLabel(names=list(st.LABELS))
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(features),
            # Keep the generator's order: split[i] == the i-th generated record.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        del dl_manager  # generated, not downloaded
        from she_jax.data import shopworld
        splits = shopworld.generate_splits(self.builder_config.world_config())
        return {name: self._generate_examples(records) for name, records in splits.items()}

    def _generate_examples(self, records: Sequence[Mapping[str, Any]]):
        for i, record in enumerate(records):
            yield i, encode_record(record)


class RecordSource(Sequence):
    """A random-access view of a tfds data source that yields schema records.

    Reads go through the source's batched `__getitems__` where possible (slices, iteration):
    tfds deserializes about twice as fast in batches.
    """

    _CHUNK = 1024

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.__getitems__(range(*index.indices(len(self))))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range [0, {len(self)})")
        return decode_example(self.source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [decode_example(example) for example in self.source.__getitems__(list(indices))]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self), self._CHUNK):
            yield from self.__getitems__(range(start, min(start + self._CHUNK, len(self))))


def make_builder(config_name: str = "tiny", data_dir: str | None = None,
                 world_overrides: Mapping[str, Any] | None = None) -> ShopRelevance:
    """The builder of a preset config, or of a custom world if world_overrides is given (its
    config name then records the overrides, so different worlds never share a directory)."""
    if not world_overrides:
        return ShopRelevance(config=config_name, data_dir=data_dir, file_format=FILE_FORMAT)
    overrides = tuple(sorted(world_overrides.items()))
    suffix = "_".join(f"{k}{v}" for k, v in overrides)
    name = "".join(c if c.isalnum() or c in "_-." else "-" for c in f"{config_name}_{suffix}")
    config = ShopRelevanceConfig(name=name, world=config_name, world_overrides=overrides,
                                 description=f"ShopWorld '{config_name}' with {dict(overrides)}")
    return ShopRelevance(config=config, data_dir=data_dir, file_format=FILE_FORMAT)


def build_dataset(config_name: str = "tiny", data_dir: str | None = None,
                  world_overrides: Mapping[str, Any] | None = None) -> ShopRelevance:
    """Generates and writes the dataset (a no-op when already built); returns the builder."""
    builder = make_builder(config_name, data_dir, world_overrides)
    builder.download_and_prepare(file_format=FILE_FORMAT)
    return builder


def load_split(split: str, config_name: str = "tiny", data_dir: str | None = None,
               world_overrides: Mapping[str, Any] | None = None) -> RecordSource:
    """The records of one split, building the dataset first if needed."""
    builder = build_dataset(config_name, data_dir, world_overrides)
    sources = builder.as_data_source()
    if split not in sources:
        raise ValueError(f"unknown split {split!r}; {builder.name}/{builder.builder_config.name} "
                         f"has {sorted(sources)}")
    return RecordSource(sources[split])
