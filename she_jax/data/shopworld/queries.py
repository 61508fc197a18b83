"""Queries: a structured intent (what the shopper wants) and its text.

Seven query types: plain category, attribute-heavy, brand, negation, affordable alternative,
Q&A (need -> category) and knowledge (needs a fact). Every phrasing choice (template,
category term, brand alias, attribute surface, need, chip) has a common pool and a rare
pool; a query drawn in rare mode uses a rare template and often rare terms, typos and word
order. SFT draws only common phrasings, so rare ones are the long tail a model never saw.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from typing import Sequence

from she_jax.data.shopworld import attributes
from she_jax.data.shopworld.taxonomy import CHIP_LEAVES, CONNECTOR_LEAVES, NEEDS, Leaf
from she_jax.data.shopworld.world import World

QUERY_TYPES = ("category", "attribute", "brand", "negation", "alternative", "qa", "knowledge")
HARD_TYPES = ("negation", "alternative", "qa", "knowledge")
KNOWLEDGE_KINDS = ("chip", "connector", "line")

# {type: (common templates, rare templates)}; {cat} is the category term, {pre}/{post} the
# attribute words written before/after it, {x} a brand or excluded value.
TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "category": (("{cat}", "{cat}", "buy {cat}", "{cat} sale"),
                 ("looking for {cat}", "need new {cat}", "where to buy {cat}",
                  "{cat} shop online", "good {cat} to buy")),
    "attribute": (("{pre} {cat} {post}", "{cat} {pre} {post}"),
                  ("{cat} in {pre} {post}", "looking for {pre} {cat} {post}",
                   "{shuffled}")),
    "brand": (("{brand} {pre} {cat} {post}", "{pre} {brand} {cat} {post}"),
              ("{pre} {cat} by {brand} {post}", "{cat} from {brand} {pre} {post}",
               "original {brand} {pre} {cat} {post}", "{brand} brand {pre} {cat} {post}")),
    "negation/brand": (("{cat} not {x}", "non {x} {cat}"),
                       ("{cat} but not {x}", "{cat} except {x}", "{cat} other than {x}",
                        "any brand but {x} {cat}")),
    "negation/material": (("{cat} without {x}", "non-{x} {cat}", "no {x} {cat}"),
                          ("{x}-free {cat}", "{cat} free of {x}", "{cat} not made of {x}")),
    "negation/color": (("{cat} not {x}", "{cat} no {x}"),
                       ("{cat} any color except {x}", "{cat} anything but {x}")),
    "alternative": (("cheaper than {x} {cat}", "{x} {cat} dupe", "like {x} {cat} but cheaper"),
                    ("budget alternative to {x} {cat}", "affordable {cat} similar to {x}",
                     "{cat} like {x} for less", "{x} {cat} but less expensive")),
    "qa": (("what do i need for {need}", "what to buy for {need}"),
           ("any recommendations for {need}", "what should i get for {need}",
            "shopping for {need} what should i buy", "suggestions for {need}")),
    "qa/wear": (("what to wear for {need}",), ("what should i wear for {need}",)),
    "knowledge/chip": (("{cat} with {x}", "{x} {cat}"),
                       ("{cat} powered by {x}", "{cat} with {x} processor", "{x} chipset {cat}")),
    "knowledge/connector": (("{cat} for {x}", "{x} {cat}"),
                            ("{cat} compatible with {x}", "{cat} that fits {x}",
                             "{x} compatible {cat}")),
    "knowledge/line": (("{x} {cat}",),
                       ("{cat} from the {x} line", "{x} series {cat}", "{x} collection {cat}")),
}
_WEAR_TOPS = ("apparel", "shoes", "bags and accessories")
_BEFORE_TERM = ("gender", "color", "material", "style", "finish", "flavor")


@dataclasses.dataclass(frozen=True)
class QueryIntent:
    """What a query asks for, with knowledge already resolved (rules read only this).

    category/parent: the wanted leaf and its parent. brand: required brand (stated, or implied
    by product_line). attributes: ((key, canonical value), ...) required, incl. a chip or a
    connector implied by a model. excluded: (kind, value) with kind 'brand' or an attribute.
    reference_brand: the premium brand an affordable-alternative query names. need: the Q&A
    need. compatible_model: the model a connector query names. text/popularity: the query.
    """
    query_type: str
    category: str
    parent: str
    brand: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    excluded: tuple[str, str] | None = None
    reference_brand: str | None = None
    need: str | None = None
    product_line: str | None = None
    compatible_model: str | None = None
    text: str = ""
    popularity: str = "unknown"


def normalize_query(text: str) -> str:
    """Lowercase, punctuation as space, single spaces: the key for split disjointness."""
    return " ".join(re.sub(r"[^\w+]+", " ", text.lower()).split())


def _category_term(leaf: Leaf, rng: random.Random, rare: bool) -> str:
    rare_pool = leaf.rare_terms + leaf.rare_typos
    if rare and rare_pool and rng.random() < 0.6:
        return rng.choice(rare_pool)
    roll = rng.random()
    if roll < 0.7:
        return leaf.name
    if roll < 0.92 or not leaf.common_typos:
        return rng.choice(leaf.common_terms)
    return rng.choice(leaf.common_typos)


def _brand_term(world: World, name: str, rng: random.Random, rare: bool) -> str:
    brand = world.brand(name)
    if rare and rng.random() < 0.5:
        return rng.choice(brand.rare_aliases)
    return rng.choice(brand.common_aliases) if rng.random() < 0.1 else name


def _attribute_words(attrs: Sequence[tuple[str, str]], rng: random.Random,
                     rare: bool) -> tuple[list[str], list[str]]:
    pre = [attributes.surface(k, v, rng, rare) for k, v in attrs if k in _BEFORE_TERM]
    post = [attributes.surface(k, v, rng, rare) for k, v in attrs if k not in _BEFORE_TERM]
    return pre, post


def _leaf_pool(world: World, query_type: str, kind: str | None, leaf_power: float,
               popularities: Sequence[str] | None) -> tuple[list[str], list[float]]:
    """The leaves a query of this type can ask for, with cumulative weights (cached)."""
    key = ("leaf_pool", query_type, kind, leaf_power, tuple(popularities or ()))
    if key not in world.cache:
        names = [leaf.name for leaf in world.taxonomy.leaves
                 if popularities is None or world.leaf_popularity[leaf.name] in popularities]
        if query_type == "qa":
            names = [n for n in names if n in NEEDS]
        elif kind == "chip":
            names = [n for n in names if n in CHIP_LEAVES]
        elif kind == "connector":
            names = [n for n in names if n in CONNECTOR_LEAVES]
        world.cache[key] = (names, list(itertools.accumulate(
            world.leaf_weight[n] ** leaf_power for n in names)))
    return world.cache[key]


def _draw_leaf(world: World, rng: random.Random, query_type: str, kind: str | None,
               leaf_power: float, popularities: Sequence[str] | None) -> str | None:
    names, cumulative = _leaf_pool(world, query_type, kind, leaf_power, popularities)
    return rng.choices(names, cum_weights=cumulative)[0] if names else None


def _template(key: str, rng: random.Random, rare: bool) -> str:
    common, uncommon = TEMPLATES[key]
    return rng.choice(uncommon if rare else common)


def _fill(template: str, **slots: str) -> str:
    return " ".join(template.format(**slots).split())


def sample_intent(world: World, rng: random.Random, query_type: str, *, leaf_power: float,
                  rare: bool, popularities: Sequence[str] | None = None) -> QueryIntent | None:
    """Draws a query of `query_type` (None when the draw has no valid form, e.g. no leaf of
    the allowed popularity supports the type). leaf_power: exponent on the Zipf leaf weights
    (1 = real traffic, <1 flatter). rare: draw a rare phrasing (long tail)."""
    if query_type not in QUERY_TYPES:
        raise ValueError(f"unknown query type {query_type!r}; expected one of {QUERY_TYPES}")
    tax, know = world.taxonomy, world.knowledge
    kind = rng.choice(KNOWLEDGE_KINDS) if query_type == "knowledge" else None
    leaf_name = _draw_leaf(world, rng, query_type, kind, leaf_power, popularities)
    if leaf_name is None:
        return None
    leaf = tax.leaf(leaf_name)
    profile = tax.profile(leaf_name)
    brands = world.brands_in(leaf.top)
    template_key = f"knowledge/{kind}" if kind else query_type
    cat = _category_term(leaf, rng, rare)
    fields: dict = dict(query_type=query_type, category=leaf.name, parent=leaf.parent)

    if query_type in ("attribute", "brand"):
        count = rng.choices((1, 2, 3), (0.45, 0.4, 0.15))[0] if query_type == "attribute" else \
            rng.choices((0, 1), (0.6, 0.4))[0]
        keys = sorted(rng.sample(sorted(profile), min(count, len(profile))))
        attrs = tuple((k, rng.choice(profile[k])) for k in keys)
        fields["attributes"] = attrs
        pre, post = _attribute_words(attrs, rng, rare)
        brand = rng.choice(brands).name if query_type == "brand" else None
        fields["brand"] = brand
        words = pre + post
        rng.shuffle(words)
        words.insert(rng.randint(0, len(words)), cat)
        text = _fill(_template(template_key, rng, rare), cat=cat, pre=" ".join(pre),
                     post=" ".join(post), shuffled=" ".join(words),
                     brand=_brand_term(world, brand, rng, rare) if brand else "")
    elif query_type == "category":
        text = _fill(_template(template_key, rng, rare), cat=cat)
    elif query_type == "negation":
        kinds = ["brand"] + [k for k in ("material", "color") if k in profile]
        kind = rng.choice(kinds)
        if kind == "brand":
            value = rng.choice(brands).name
            shown = _brand_term(world, value, rng, rare)
        else:
            value = shown = rng.choice(profile[kind])
        fields["excluded"] = (kind, value)
        text = _fill(_template(f"negation/{kind}", rng, rare), cat=cat, x=shown)
    elif query_type == "alternative":
        premium = [b.name for b in brands if b.tier(leaf.top) == "premium"]
        reference = rng.choice(premium)
        fields["reference_brand"] = reference
        text = _fill(_template(template_key, rng, rare), cat=cat,
                     x=_brand_term(world, reference, rng, rare))
    elif query_type == "qa":
        needs = NEEDS[leaf.name]
        need = rng.choice(needs[1:]) if rare and len(needs) > 1 else needs[0]
        if leaf.top in _WEAR_TOPS and rng.random() < 0.5:
            template_key = "qa/wear"
        fields["need"] = need
        text = _fill(_template(template_key, rng, rare), need=need)
        if "gender" in profile and rng.random() < 0.3:
            gender = rng.choice(profile["gender"])
            fields["attributes"] = (("gender", gender),)
            text += " " + attributes.surface("gender", gender, rng, rare)
    elif kind == "chip":
        chips = sorted({m.chip for m in know.models_in(leaf.name)
                        if rare or know.is_common_chip(m.chip)})
        if not chips:
            return None
        chip = rng.choice(chips)
        fields["attributes"] = (("chip", chip),)
        text = _fill(_template(template_key, rng, rare), cat=cat, x=chip)
    elif kind == "connector":
        model = rng.choice(know.models)
        fields["attributes"] = (("connector", model.connector),)
        fields["compatible_model"] = model.name
        text = _fill(_template(template_key, rng, rare), cat=cat, x=model.name)
    else:  # knowledge via a product line
        brand = rng.choice(brands).name
        line = know.lines[(brand, leaf.parent)]
        fields.update(brand=brand, product_line=line)
        text = _fill(_template(template_key, rng, rare), cat=cat, x=line)

    leaf_popularity = world.leaf_popularity[leaf.name]
    popularity = "tail" if rare or leaf_popularity == "tail" else leaf_popularity
    return QueryIntent(**fields, text=text, popularity=popularity)
