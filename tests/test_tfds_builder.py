"""Tests for she_jax.data.tfds_builder: build a small world to array_record, read it back."""

import importlib.util
import sys

import pytest
import tensorflow_datasets as tfds

from she_jax.data import shopworld, tfds_builder

# A tiny world shrunk further so the build takes well under a second.
OVERRIDES = {"sft_size": 40, "rl_size": 20, "dev_size": 10, "test_size": 5}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = tfds_builder.build_dataset("tiny", data_dir, world_overrides=OVERRIDES)
    return builder, data_dir


@pytest.fixture(scope="module")
def generated():
    return shopworld.generate_splits(shopworld.WorldConfig.preset("tiny", **OVERRIDES))


def test_tensorflow_is_not_needed(built):
    assert importlib.util.find_spec("tensorflow") is None
    assert "tensorflow" not in sys.modules


def test_array_record_files_and_splits(built, generated):
    builder, _ = built
    assert builder.name == "shop_relevance"
    assert builder.info.file_format.value == "array_record"
    assert set(builder.info.splits) == set(generated) == set(shopworld.SPLITS)
    for split, records in generated.items():
        assert builder.info.splits[split].num_examples == len(records)
    files = list(builder.data_path.glob("*.array_record-*"))
    assert len(files) == len(generated)


def test_read_back_equals_generator_output(built, generated):
    builder, data_dir = built
    for split, records in generated.items():
        loaded = tfds_builder.load_split(split, "tiny", data_dir, world_overrides=OVERRIDES)
        assert len(loaded) == len(records)
        assert list(loaded) == records  # same records, same order, annotations/cot decoded
        assert loaded[-1] == records[-1] and loaded[1:3] == records[1:3]
    assert any(r["annotations"] is None for r in generated["rl"])  # both cases exercised
    assert any(r["cot"] is not None for r in generated["sft"])


def test_tfds_data_source_by_name(built, generated):
    builder, data_dir = built
    name = f"shop_relevance/{builder.builder_config.name}"
    source = tfds.data_source(name, data_dir=data_dir, download=False)["dev"]
    assert tfds_builder.RecordSource(source)[0] == generated["dev"][0]
    raw = source[0]
    assert isinstance(raw["label"], int) and isinstance(raw["annotations"], bytes)


def test_encode_decode_round_trip_and_errors(generated):
    record = generated["sft"][0]
    assert tfds_builder.decode_example(tfds_builder.encode_record(record)) == record
    no_cot = dict(record, annotations=None, cot=None)
    assert tfds_builder.decode_example(tfds_builder.encode_record(no_cot)) == no_cot
    with pytest.raises(ValueError, match="lacks fields"):
        tfds_builder.encode_record({"id": "x", "query": "q"})


def test_unknown_split(built):
    _, data_dir = built
    with pytest.raises(ValueError, match="unknown split 'train'"):
        tfds_builder.load_split("train", "tiny", data_dir, world_overrides=OVERRIDES)


def test_preset_configs_map_to_world_presets():
    configs = {c.name: c for c in tfds_builder.ShopRelevance.BUILDER_CONFIGS}
    assert set(configs) == {"tiny", "small", "full"}
    assert configs["small"].world_config() == shopworld.WorldConfig.preset("small")


def test_loader_reads_the_data_source(built, generated, tmp_path):
    from she_jax.data import loader
    from she_jax.tokenizer import train_sentencepiece
    _, data_dir = built
    tok = train_sentencepiece(shopworld.tokenizer_corpus(generated), 600, tmp_path / "tok")
    source = tfds_builder.load_split("sft", "tiny", data_dir, world_overrides=OVERRIDES)
    from_source = loader.sft_dataset(source, tok, batch_size=4, seed=1)
    from_list = loader.sft_dataset(generated["sft"], tok, batch_size=4, seed=1)
    assert len(from_source) == len(from_list) > 0
    for k in range(len(from_list)):
        assert all((from_source[k][key] == from_list[k][key]).all() for key in from_list[k])
