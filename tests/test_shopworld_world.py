"""ShopWorld's world: taxonomy, brands, knowledge facts, names, popularity, determinism."""

import random

import pytest

from she_jax.data.shopworld import WorldConfig, build_world, tokenizer_corpus
from she_jax.data.shopworld import names, taxonomy
from she_jax.data.shopworld.attributes import PROFILES


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig.preset("tiny"))


def test_taxonomy_size_levels_and_terms(world):
    tax = world.taxonomy
    assert len(tax.leaves) >= 150
    assert len(tax.tops) >= 10 and len(tax.parents) >= 40
    for leaf in tax.leaves:
        # Three levels: top > parent > leaf, all distinct names.
        assert len({leaf.top, leaf.parent, leaf.name}) == 3
        assert leaf.common_terms[0] == leaf.name and len(leaf.common_terms + leaf.rare_terms) >= 2
        assert leaf.common_typos and leaf.rare_typos
        assert leaf.name not in leaf.common_typos + leaf.rare_typos
        assert leaf.profile in PROFILES
        assert tax.siblings(leaf.name), f"{leaf.name} has no sibling (rule R7 needs one)"
    terms = [t for leaf in tax.leaves for t in leaf.common_terms + leaf.rare_terms]
    assert len(terms) == len(set(terms)), "a term must name a single leaf"


def test_taxonomy_rejects_a_term_naming_two_leaves(monkeypatch):
    bad = {"shoes": {"boots": ("footwear", ("rain boots|wellies", "snow boots|wellies"))}}
    monkeypatch.setattr(taxonomy, "TAXONOMY", bad)
    with pytest.raises(ValueError, match="wellies"):
        taxonomy.build_taxonomy(random.Random(0))


def test_brands_aliases_and_tiers(world):
    assert len(world.brands) >= 200
    assert len({b.name for b in world.brands}) == len(world.brands)
    for brand in world.brands:
        assert brand.common_aliases and brand.rare_aliases and brand.name not in brand.rare_aliases
    for top in world.taxonomy.tops:
        tiers = [b.tier(top) for b in world.brands_in(top)]
        assert tiers.count("premium") >= 2 and tiers.count("budget") >= 2


def test_too_few_brands_is_a_clear_error():
    with pytest.raises(ValueError, match="num_brands"):
        build_world(WorldConfig(num_brands=10))


def test_knowledge_facts(world):
    know = world.knowledge
    brand_names = {b.name for b in world.brands}
    assert len(know.chips) == len(set(know.chips))
    phones = know.models_in("smartphones")
    assert len(phones) >= 20 and all(m.chip in know.chips for m in phones)
    for model in know.models:
        assert model.brand in brand_names
        assert know.lines[(model.brand, world.taxonomy.leaf(model.leaf).parent)] == model.line
        assert model.name.startswith(model.line + " ")
    assert len({m.name for m in know.models}) == len(know.models)
    for line, (brand, parent) in know.line_owner.items():
        assert know.lines[(brand, parent)] == line and line not in brand_names


def test_leaf_popularity_is_zipfian_head_torso_tail(world):
    weights = sorted(world.leaf_weight.values(), reverse=True)
    assert weights[0] / weights[9] == pytest.approx(10.0)  # 1/rank with exponent 1
    counts = {p: list(world.leaf_popularity.values()).count(p) for p in ("head", "torso", "tail")}
    assert 0 < counts["head"] < counts["torso"] < counts["tail"]
    head_mass = sum(w for n, w in world.leaf_weight.items() if world.leaf_popularity[n] == "head")
    assert 0.5 <= head_mass < 0.6


def test_world_is_deterministic_and_seeded():
    a, b = build_world(WorldConfig(seed=3)), build_world(WorldConfig(seed=3))
    assert a.brands == b.brands and a.knowledge.models == b.knowledge.models
    assert a.leaf_popularity == b.leaf_popularity
    assert build_world(WorldConfig(seed=4)).brands != a.brands


def test_typo_variants():
    variants = names.typo_variants("running shoes", random.Random(0), 4, avoid={"runing shoes"})
    assert len(variants) == 4 and len(set(variants)) == 4
    for v in variants:
        assert v != "running shoes" and v != "runing shoes" and v[0] == "r"
        assert abs(len(v) - len("running shoes")) <= 1


def test_tokenizer_corpus_covers_world_vocabulary(world):
    text = "\n".join(tokenizer_corpus(world))
    for needle in (world.brands[0].name, world.brands[0].rare_aliases[0],
                   world.knowledge.models[0].name, world.knowledge.chips[-1], "running shoes"):
        assert needle in text
