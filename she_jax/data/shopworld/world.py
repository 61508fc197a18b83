"""The World: taxonomy, brands, knowledge and leaf popularity, built from a WorldConfig."""

from __future__ import annotations

import dataclasses
import random

from she_jax.data.shopworld.brands import Brand, build_brands
from she_jax.data.shopworld.config import WorldConfig
from she_jax.data.shopworld.knowledge import Knowledge, build_knowledge
from she_jax.data.shopworld.taxonomy import Taxonomy, build_taxonomy

POPULARITIES = ("head", "torso", "tail")


def stream(seed: int, *names: str) -> random.Random:
    """An independent random stream for (seed, names): adding a consumer never shifts the
    others, so a split's records depend only on the seed and the split."""
    return random.Random(f"shopworld/{seed}/" + "/".join(names))


@dataclasses.dataclass(frozen=True)
class World:
    config: WorldConfig
    taxonomy: Taxonomy
    brands: tuple[Brand, ...]
    knowledge: Knowledge
    leaf_weight: dict[str, float]       # Zipf query traffic per leaf (sums to 1)
    leaf_popularity: dict[str, str]     # leaf -> 'head' | 'torso' | 'tail'

    def __post_init__(self):
        by_top: dict[str, list[Brand]] = {}
        for brand in self.brands:
            for top in brand.tops:
                by_top.setdefault(top, []).append(brand)
        object.__setattr__(self, "_brand", {b.name: b for b in self.brands})
        object.__setattr__(self, "_brands_in", {k: tuple(v) for k, v in by_top.items()})
        # Derived lookups (pure functions of the fields), filled lazily by the samplers.
        object.__setattr__(self, "cache", {})

    def brand(self, name: str) -> Brand:
        return self._brand[name]

    def brands_in(self, top: str) -> tuple[Brand, ...]:
        return self._brands_in[top]


def build_world(cfg: WorldConfig) -> World:
    """Builds the world (milliseconds); deterministic in cfg."""
    taxonomy = build_taxonomy(stream(cfg.seed, "taxonomy"), cfg.max_leaves_per_parent)
    # Made-up names must never collide with a real term or with each other.
    taken = {t for leaf in taxonomy.leaves
             for t in leaf.common_terms + leaf.rare_terms + leaf.common_typos + leaf.rare_typos}
    taken |= {w for t in list(taken) for w in t.split()}
    brands = build_brands(stream(cfg.seed, "brands"), cfg.num_brands, taxonomy.tops, taken)
    knowledge = build_knowledge(stream(cfg.seed, "knowledge"), taxonomy, brands, taken)
    ranked = [leaf.name for leaf in taxonomy.leaves]
    stream(cfg.seed, "popularity").shuffle(ranked)
    raw = [1.0 / (rank + 1) ** cfg.zipf_exponent for rank in range(len(ranked))]
    total = sum(raw)
    leaf_weight, leaf_popularity, cumulative = {}, {}, 0.0
    for name, weight in zip(ranked, raw):
        leaf_weight[name] = weight / total
        # A leaf is head while the traffic before it is under head_mass (so the top leaf always is).
        leaf_popularity[name] = ("head" if cumulative < cfg.head_mass else
                                 "torso" if cumulative < cfg.torso_mass else "tail")
        cumulative += weight / total
    return World(cfg, taxonomy, brands, knowledge, leaf_weight, leaf_popularity)
