"""ShopWorld splits: schema, determinism, label mix, annotations, disjointness, hardness."""

import collections
import json
import re

import pytest

from she_jax import special_tokens as st
from she_jax.data import cot
from she_jax.data.shopworld import (HARD_TYPES, SPLITS, TEST_SPLITS, WorldConfig, build_world,
                                    generate_split, label_from_checks, normalize_query,
                                    tokenizer_corpus)
from she_jax.data.shopworld.annotate import checks_from_facts
from she_jax.data.shopworld.config import TRAINING_ONLY_FIELDS
from she_jax.data.shopworld.splits import BUCKETS, query_bucket, split_size

CFG = WorldConfig(sft_size=1500, rl_size=1000, dev_size=200, test_size=200)
RECORD_KEYS = {"id", "query", "item_title", "label", "query_type", "popularity", "annotations",
               "cot"}
QUERY_TYPES = {"category", "attribute", "brand", "negation", "alternative", "qa", "knowledge",
               "unknown"}


@pytest.fixture(scope="module")
def world():
    return build_world(CFG)


@pytest.fixture(scope="module")
def splits(world):
    return {name: generate_split(world, name) for name in SPLITS}


def _facts(record, step):
    return dict(f.split(": ", 1) for f in record["annotations"][step])


def test_records_follow_the_schema(splits):
    ids = set()
    for name, records in splits.items():
        assert len(records) == split_size(CFG, name)
        for r in records:
            assert set(r) == RECORD_KEYS
            assert isinstance(r["id"], str) and r["id"] not in ids
            ids.add(r["id"])
            assert r["query"] and r["item_title"] and r["query"] == r["query"].strip()
            assert r["label"] in st.LABELS and r["query_type"] in QUERY_TYPES
            assert r["popularity"] in ("head", "torso", "tail")
            if r["annotations"] is None:
                assert r["cot"] is None
                continue
            assert tuple(r["annotations"]) == st.STEP_NAMES
            for facts in r["annotations"].values():
                assert facts and all(re.fullmatch(r"[a-z ]+: [^;:]+", f) for f in facts), facts
            assert r["cot"] == cot.render_cot(r["annotations"], r["label"], "think_first")


def test_annotations_are_consistent_with_labels(world, splits):
    tax = world.taxonomy
    for records in splits.values():
        for r in records:
            if r["annotations"] is None:
                continue
            assert r["annotations"]["judgment"] == [f"label: {r['label']}"]
            (match_fact,) = r["annotations"]["category_match"]
            category_match = match_fact.removeprefix("category match: ")
            # The judgment follows from steps 3-4 alone, by the rules.
            checks = checks_from_facts(r["annotations"]["attribute_match"])
            assert label_from_checks(category_match, checks)[0] == r["label"], r
            wanted = tax.leaf(_facts(r, "query")["category"])
            got = tax.leaf(_facts(r, "item")["category"])
            expected = ("exact" if wanted == got else "sibling" if wanted.parent == got.parent
                        else "none")
            assert category_match == expected
            parsed = cot.parse_cot(r["cot"])
            assert parsed.format_valid and parsed.label == r["label"]
            assert parsed.steps == r["annotations"]


def test_label_mix_is_exact_per_split(splits):
    for name, records in splits.items():
        counts = collections.Counter(r["label"] for r in records)
        for label, fraction in zip(st.LABELS, CFG.label_mix):
            assert abs(counts[label] - fraction * len(records)) <= 1, (name, counts)


def test_label_mix_is_configurable():
    cfg = WorldConfig(rl_size=200, label_mix=(0.25, 0.25, 0.25, 0.25))
    counts = collections.Counter(r["label"] for r in generate_split(build_world(cfg), "rl"))
    assert counts == {label: 50 for label in st.LABELS}


def test_same_seed_gives_identical_records_other_seed_differs():
    cfg = WorldConfig(dev_size=150, test_size=60)
    a = [generate_split(build_world(cfg), s) for s in ("dev", "test_knowledge")]
    b = [generate_split(build_world(cfg), s) for s in ("dev", "test_knowledge")]
    assert json.dumps(a) == json.dumps(b)
    other = generate_split(build_world(WorldConfig(seed=1, dev_size=150)), "dev")
    assert json.dumps(other) != json.dumps(a[0])


def test_no_test_or_dev_query_in_training_splits(splits):
    train = {normalize_query(r["query"]) for s in ("sft", "rl") for r in splits[s]}
    for name in TEST_SPLITS + ("dev",):
        held_out = {normalize_query(r["query"]) for r in splits[name]}
        assert not held_out & train, name
    for r in splits["sft"] + splits["rl"]:
        assert query_bucket(CFG.seed, r["query"]) in BUCKETS["train"]


def test_test_splits_hold_only_their_kind(splits):
    for t in HARD_TYPES:
        assert {r["query_type"] for r in splits[f"test_{t}"]} == {t}
    for name, popularity in (("test_head", "head"), ("test_longtail", "tail")):
        assert {r["popularity"] for r in splits[name]} == {popularity}
        assert {r["query_type"] for r in splits[name]} == {"category", "attribute", "brand"}
    assert all(r["annotations"] is not None for name in TEST_SPLITS for r in splits[name])


def test_sft_is_head_heavy_and_fully_annotated_rl_is_wider(splits):
    def share(name, popularity):
        return sum(r["popularity"] == popularity for r in splits[name]) / len(splits[name])
    assert share("sft", "head") > 0.4 > share("rl", "head")
    assert share("rl", "tail") > 2 * share("sft", "tail")
    assert all(r["annotations"] and r["cot"] for r in splits["sft"])
    assert {r["query_type"] for r in splits["rl"]} == QUERY_TYPES - {"unknown"}


def test_training_only_fields_leave_dev_and_test_records_unchanged():
    """The report pairs runs whose worlds differ only in TRAINING_ONLY_FIELDS: their dev and
    test records must be the same, while the training split does change."""
    base = dict(sft_size=300, rl_size=300, dev_size=80, test_size=40)
    changed = {"sft_size": 150, "rl_size": 200, "annotation_fraction": 1.0}
    assert set(changed) == set(TRAINING_ONLY_FIELDS)
    world_a = build_world(WorldConfig(**base))
    world_b = build_world(WorldConfig(**{**base, **changed}))
    for name in ("dev",) + TEST_SPLITS:
        assert json.dumps(generate_split(world_a, name)) == json.dumps(
            generate_split(world_b, name)), name
    assert json.dumps(generate_split(world_a, "rl")) != json.dumps(
        generate_split(world_b, "rl"))


@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_rl_annotation_fraction(fraction):
    cfg = WorldConfig(rl_size=300, annotation_fraction=fraction)
    records = generate_split(build_world(cfg), "rl")
    assert sum(r["annotations"] is not None for r in records) == round(300 * fraction)


def test_hard_types_are_hard(splits):
    def fraction(records, predicate):
        return sum(map(predicate, records)) / len(records)

    negation_l4 = [r for r in splits["test_negation"] if r["label"] == "L4"]
    excluded = lambda r: next(v for k, v in _facts(r, "query").items() if k.startswith("excluded"))
    # The negated word is written in titles of items that respect the negation.
    assert fraction(negation_l4, lambda r: excluded(r) in r["item_title"]) > 0.3
    alternative_l4 = [r for r in splits["test_alternative"] if r["label"] == "L4"]
    assert fraction(alternative_l4,
                    lambda r: _facts(r, "query")["reference brand"] in r["item_title"]) > 0.3
    chip_l4 = [r for r in splits["test_knowledge"] if r["label"] == "L4"
               and "chip" in _facts(r, "query")]
    # Only the model is named: the chip must come from a learned fact.
    assert chip_l4 and fraction(chip_l4, lambda r: _facts(r, "query")["chip"] not in
                                r["item_title"]) > 0.5


def test_tokenizer_corpus_of_records(splits):
    records = splits["dev"][:3]
    texts = list(tokenizer_corpus({"dev": records}))
    assert texts[:2] == [records[0]["query"], records[0]["item_title"]]
    assert records[0]["cot"] in texts and len(texts) == 9


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="label_mix"):
        WorldConfig(label_mix=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="annotation_fraction"):
        WorldConfig(annotation_fraction=1.5)
    with pytest.raises(ValueError, match="unknown WorldConfig preset"):
        WorldConfig.preset("huge")
    assert WorldConfig.preset("small", seed=2).seed == 2
    assert WorldConfig.preset("tiny").sft_size == 20_000
    with pytest.raises(ValueError, match="unknown split"):
        split_size(CFG, "test")


def test_a_shrunken_world_still_builds_every_split():
    cfg = WorldConfig(max_leaves_per_parent=2, num_brands=60, sft_size=100, rl_size=60,
                      dev_size=40, test_size=40)
    world = build_world(cfg)
    assert len(world.taxonomy.leaves) < 100
    for name in SPLITS:
        records = generate_split(world, name)
        assert len(records) == split_size(cfg, name)
        for r in records:
            if r["annotations"] is not None:
                assert world.taxonomy.leaf(_facts(r, "query")["category"]).name in r["cot"]
