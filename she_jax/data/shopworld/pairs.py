"""Pair construction: for a query intent and a target label, build an item the rules give
that label, and write its title (with the hard forms of the hard query types).

The label of a pair is always `labels.judge(intent, item)`; the target only steers which
item is built, so the label mix is exact without the rules ever being bypassed.
"""

from __future__ import annotations

import dataclasses
import random

from she_jax.data.shopworld import items as items_lib
from she_jax.data.shopworld.attributes import MINOR_ATTRIBUTES
from she_jax.data.shopworld.items import Item
from she_jax.data.shopworld.queries import QueryIntent
from she_jax.data.shopworld.taxonomy import MODEL_LEAVES
from she_jax.data.shopworld.world import World

# How a title names a brand that is not the item's: 'compatible with X'-style stuffing.
BRAND_MENTIONS = ("{x} style", "like {x}", "{x} dupe", "compatible with {x}", "vs {x}",
                  "{x} alternative")
MATERIAL_MENTIONS = ("{x}-free", "no {x}", "{x} look")
COLOR_MENTIONS = ("{x} logo", "{x} trim", "{x} stitching")


def build_item(world: World, rng: random.Random, leaf_name: str, *, brand: str | None = None,
               avoid_brands: frozenset[str] = frozenset(), tier: str | None = None,
               fixed: dict[str, str] | None = None, drop: frozenset[str] = frozenset(),
               chip: str | None = None, avoid_chip: str | None = None) -> Item | None:
    """An item of `leaf_name` (title not yet written), or None if no brand/model fits.

    brand/avoid_brands/tier: constraints on the brand (tier in the leaf's top category);
    fixed: attribute values it must have (keys outside the leaf's profile are ignored, so
    the item leaves them unspecified); drop: attribute keys it must not state; chip /
    avoid_chip: constraints on the model's chip (model-bearing leaves only).
    """
    tax, know = world.taxonomy, world.knowledge
    leaf = tax.leaf(leaf_name)
    profile = tax.profile(leaf_name)

    def brand_ok(name: str) -> bool:
        b = world.brand(name)
        return (leaf.top in b.tops and name not in avoid_brands
                and (brand is None or name == brand) and (tier is None or b.tier(leaf.top) == tier))

    model = None
    if leaf_name in MODEL_LEAVES:
        models = [m for m in know.models_in(leaf_name) if brand_ok(m.brand)
                  and (chip is None or m.chip == chip)
                  and (avoid_chip is None or m.chip != avoid_chip)]
        if not models:
            return None
        model = rng.choice(models)
        brand_name = model.brand
    else:
        if chip is not None:
            return None  # the item cannot have the chip: this target needs another leaf
        candidates = [b.name for b in world.brands_in(leaf.top) if brand_ok(b.name)]
        if not candidates:
            return None
        brand_name = rng.choice(candidates)
    fixed = fixed or {}
    attrs = {}
    for key, values in profile.items():
        if key in fixed:
            attrs[key] = fixed[key]
        elif key not in drop and rng.random() < 0.5:
            attrs[key] = rng.choice(values)
    if model is not None:
        attrs["connector"] = model.connector
        if model.chip is not None:
            attrs["chip"] = model.chip
    return Item(category=leaf.name, parent=leaf.parent, brand=brand_name,
                tier=world.brand(brand_name).tier(leaf.top),
                attributes=tuple(sorted(attrs.items())),
                model=model.name if model else None, line=know.lines[(brand_name, leaf.parent)])


def _other(values: tuple[str, ...], avoid: str, rng: random.Random) -> str | None:
    options = [v for v in values if v != avoid]
    return rng.choice(options) if options else None


def _satisfying(world: World, rng: random.Random, intent: QueryIntent, leaf_name: str,
                hard: bool) -> dict:
    """build_item arguments under which every constraint of `intent` holds."""
    fixed = {k: v for k, v in intent.attributes if k != "chip"}
    avoid = set()
    if intent.excluded is not None:
        kind, value = intent.excluded
        if kind == "brand":
            avoid.add(value)
        else:
            values = world.taxonomy.profile(leaf_name).get(kind, ())
            faux = f"faux {value}"
            # Hard negation: 'non-leather' answered by a 'faux leather' title.
            fixed[kind] = faux if hard and faux in values else _other(values, value, rng)
            if fixed[kind] is None:
                del fixed[kind]
    if intent.reference_brand is not None:
        avoid.add(intent.reference_brand)
    return dict(brand=intent.brand, avoid_brands=frozenset(avoid),
                tier="budget" if intent.reference_brand else None, fixed=fixed,
                chip=dict(intent.attributes).get("chip"))


def _key_attributes(intent: QueryIntent) -> list[str]:
    return [k for k, _ in intent.attributes if k not in MINOR_ATTRIBUTES and k != "chip"]


def _unrelated_leaf(world: World, rng: random.Random, intent: QueryIntent) -> str:
    tax = world.taxonomy
    top = tax.leaf(intent.category).top
    same_top = [leaf.name for leaf in tax.leaves
                if leaf.top == top and leaf.parent != intent.parent]
    other_top = [leaf.name for leaf in tax.leaves if leaf.top != top]
    return rng.choice(same_top if same_top and rng.random() < 0.4 else other_top)


def item_for_target(world: World, rng: random.Random, intent: QueryIntent, target: str,
                    hard: bool) -> Item | None:
    """An item meant to get label `target` for `intent` (None if this intent cannot have it).

    L4: every constraint holds on the query's leaf. L3: a sibling leaf with the constraints
    holding, or the leaf with a stated key attribute left unspecified or a minor one (style,
    material) different. L2: one key constraint violated (brand, attribute/spec, excluded
    value, premium or the named brand for an alternative query), on the leaf or a sibling.
    L1: a leaf of another parent.
    """
    siblings = [s.name for s in world.taxonomy.siblings(intent.category)]
    if target == "L1":
        return build_item(world, rng, _unrelated_leaf(world, rng, intent))
    args = _satisfying(world, rng, intent, intent.category, hard)
    if target == "L4":
        return build_item(world, rng, intent.category, **args)
    if target == "L3":
        modes = ["sibling"] * 2
        stated = dict(intent.attributes)
        droppable = _key_attributes(intent)
        if intent.excluded is not None and intent.excluded[0] != "brand":
            droppable.append(intent.excluded[0])
        modes += ["unspecified"] * bool(droppable)
        minor = [k for k in stated if k in MINOR_ATTRIBUTES]
        modes += ["minor"] * bool(minor)
        mode = rng.choice(modes)
        if mode == "sibling":
            if not siblings:
                return None
            leaf = rng.choice(siblings)
            return build_item(world, rng, leaf, **_satisfying(world, rng, intent, leaf, hard))
        if mode == "unspecified":
            key = rng.choice(droppable)
            args["fixed"].pop(key, None)
            return build_item(world, rng, intent.category, drop=frozenset({key}), **args)
        key = rng.choice(minor)
        value = _other(world.taxonomy.profile(intent.category)[key], stated[key], rng)
        if value is None:
            return None
        args["fixed"][key] = value
        return build_item(world, rng, intent.category, **args)
    if target != "L2":
        raise ValueError(f"unknown target label {target!r}")
    violations = ["brand"] * (intent.brand is not None) + _key_attributes(intent)
    violations += ["chip"] * ("chip" in dict(intent.attributes))
    violations += ["excluded"] * (intent.excluded is not None)
    violations += ["alternative"] * (intent.reference_brand is not None)
    if not violations:
        return None
    leaf = intent.category if not siblings or rng.random() < 0.85 else rng.choice(siblings)
    args = _satisfying(world, rng, intent, leaf, hard)
    violation = rng.choice(violations)
    if violation == "brand":
        args["avoid_brands"] = args["avoid_brands"] | {intent.brand}
        args["brand"] = None
    elif violation == "chip":
        args["avoid_chip"], args["chip"] = args["chip"], None
    elif violation == "excluded":
        kind, value = intent.excluded
        if kind == "brand":
            args["brand"], args["avoid_brands"] = value, frozenset()
        else:
            args["fixed"][kind] = value
    elif violation == "alternative":
        if rng.random() < 0.5:
            args["brand"], args["avoid_brands"], args["tier"] = (intent.reference_brand,
                                                                 frozenset(), None)
        else:
            args["tier"] = "premium"
    else:
        value = _other(world.taxonomy.profile(leaf).get(violation, ()),
                       dict(intent.attributes)[violation], rng)
        if value is None:
            return None
        args["fixed"][violation] = value
    return build_item(world, rng, leaf, **args)


def write_title(world: World, rng: random.Random, intent: QueryIntent, item: Item,
                hard: bool) -> Item:
    """`item` with its title. Hard forms (when `hard`): a negation title names the excluded
    brand/material/color it does not have; an alternative title names the premium brand it is
    not; a knowledge title leaves out the fact the query turns on (chip, or brand behind a
    product line)."""
    leaf = world.taxonomy.leaf(item.category)
    mentions: list[str] = []
    hidden: set[str] = set()
    show_brand, show_line = rng.random() < 0.85, rng.random() < 0.3
    if not show_brand:
        show_line = True
    if item.model is not None:
        show_brand = rng.random() < 0.6
        if rng.random() < 0.6:
            hidden.add("chip")
        if rng.random() < 0.7:
            hidden.add("connector")
    named_brand = intent.reference_brand or intent.brand
    if intent.excluded is not None and intent.excluded[0] == "brand":
        named_brand = intent.excluded[1]
    if named_brand and item.brand != named_brand and rng.random() < (0.8 if hard else 0.1):
        mentions.append(rng.choice(BRAND_MENTIONS).format(x=named_brand))
    if hard and intent.excluded is not None and intent.excluded[0] != "brand":
        kind, value = intent.excluded
        have = item.attr(kind)
        if have is not None and have != value and value not in have:
            pool = MATERIAL_MENTIONS if kind == "material" else COLOR_MENTIONS
            mentions.append(rng.choice(pool).format(x=value))
    if intent.query_type == "knowledge" and hard:
        if intent.product_line is not None:
            show_brand, show_line = rng.random() < 0.5, False
            if not show_brand:
                show_line = True  # a title names the brand or the line, never neither
        hidden.add("chip")
    elif intent.query_type == "knowledge" and intent.product_line is not None:
        show_line = True
    stuffed = []
    noise = world.config.title_noise
    siblings = world.taxonomy.siblings(item.category)
    if siblings and rng.random() < 0.2 * noise:
        stuffed.append(rng.choice(siblings).common_terms[0])
    if item.parent != intent.parent and rng.random() < 0.15 * noise:
        stuffed.append(world.taxonomy.leaf(intent.category).name)
    if rng.random() < 0.08 * noise:
        stuffed.append(rng.choice(BRAND_MENTIONS).format(
            x=rng.choice(world.brands_in(leaf.top)).name))
    title = items_lib.render_title(rng, item, leaf, show_brand=show_brand, show_line=show_line,
                                   hidden=frozenset(hidden), mentions=mentions,
                                   stuffed_terms=stuffed, noise=noise)
    return dataclasses.replace(item, title=title)
