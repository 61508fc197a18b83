"""Knowledge facts a judge must have learned: product line -> brand, model -> brand,
model -> chip, model -> charging connector.

They show up in item titles only some of the time (a title may name just the model), so a
knowledge query ("<chip> smartphones", "chargers for <model>", "<line> running shoes") is
resolvable only by having learned the fact from other titles or from gold CoTs.
"""

from __future__ import annotations

import dataclasses
import random

from she_jax.data.shopworld import attributes, names
from she_jax.data.shopworld.brands import Brand
from she_jax.data.shopworld.taxonomy import CHIP_LEAVES, MODEL_LEAVES, Taxonomy

CONNECTORS = attributes.PROFILES["charging"]["connector"]
NUM_CHIPS = 18
# Chips from this index on are never named in SFT queries (knowledge seen only in RL/tests).
NUM_COMMON_CHIPS = 10


@dataclasses.dataclass(frozen=True)
class Model:
    """A numbered model ('zephyr x9') of a brand's product line in a model-bearing leaf."""
    name: str
    brand: str
    line: str
    leaf: str
    chip: str | None
    connector: str


@dataclasses.dataclass(frozen=True)
class Knowledge:
    lines: dict[tuple[str, str], str]          # (brand, parent) -> product line name
    line_owner: dict[str, tuple[str, str]]     # line -> (brand, parent)
    models: tuple[Model, ...]
    chips: tuple[str, ...]

    def __post_init__(self):
        by_name = {m.name: m for m in self.models}
        by_leaf: dict[str, list[Model]] = {}
        for m in self.models:
            by_leaf.setdefault(m.leaf, []).append(m)
        object.__setattr__(self, "_model_by_name", by_name)
        object.__setattr__(self, "_models_by_leaf", {k: tuple(v) for k, v in by_leaf.items()})

    def model(self, name: str) -> Model:
        return self._model_by_name[name]

    def models_in(self, leaf: str) -> tuple[Model, ...]:
        return self._models_by_leaf.get(leaf, ())

    def is_common_chip(self, chip: str) -> bool:
        return self.chips.index(chip) < NUM_COMMON_CHIPS


def build_knowledge(rng: random.Random, taxonomy: Taxonomy, brands: tuple[Brand, ...],
                    taken: set[str]) -> Knowledge:
    """Lines for every (brand, parent) the brand sells in; 2-3 models per (brand, model leaf);
    chips shared across models. `taken` keeps all made-up names distinct."""
    chip_words = names.unique_words(rng, NUM_CHIPS, taken, min_len=5, max_len=8)
    chips = tuple(f"{w} {rng.choice('atmqz')}{rng.randint(1, 9)}" for w in chip_words)
    parents_of_top: dict[str, list[str]] = {}
    for leaf in taxonomy.leaves:
        parents_of_top.setdefault(leaf.top, [])
        if leaf.parent not in parents_of_top[leaf.top]:
            parents_of_top[leaf.top].append(leaf.parent)
    lines: dict[tuple[str, str], str] = {}
    for brand in brands:
        for top in brand.tops:
            for parent in parents_of_top.get(top, ()):
                lines[(brand.name, parent)] = names.unique_words(rng, 1, taken, 4, 8, 2, 2)[0]
    models: list[Model] = []
    taken_models: set[str] = set()
    for leaf_name in MODEL_LEAVES:
        if leaf_name not in {leaf.name for leaf in taxonomy.leaves}:
            continue
        leaf = taxonomy.leaf(leaf_name)
        for brand in brands:
            if leaf.top not in brand.tops:
                continue
            line = lines[(brand.name, leaf.parent)]
            # Siblings share the parent's line, so model codes must differ across leaves too.
            for _ in range(rng.randint(2, 3)):
                name = f"{line} {names.model_code(rng)}"
                while name in taken_models:
                    name = f"{line} {names.model_code(rng)}"
                taken_models.add(name)
                chip = rng.choice(chips) if leaf_name in CHIP_LEAVES else None
                models.append(Model(name, brand.name, line, leaf_name, chip,
                                    rng.choice(CONNECTORS)))
    line_owner = {line: key for key, line in lines.items()}
    return Knowledge(lines=lines, line_owner=line_owner, models=tuple(models), chips=chips)
