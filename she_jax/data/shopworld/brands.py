"""Brands: made-up names with aliases, the top-level categories they sell in, and a price
tier (premium or budget) per top-level category."""

from __future__ import annotations

import dataclasses
import functools
import random

from she_jax.data.shopworld import names

TIERS = ("premium", "budget")


@dataclasses.dataclass(frozen=True)
class Brand:
    """name: canonical (lowercase); common_aliases appear in SFT queries, rare_aliases only in
    RL/test queries; tiers: ((top, tier), ...) for the tops the brand sells in."""
    name: str
    common_aliases: tuple[str, ...]
    rare_aliases: tuple[str, ...]
    tiers: tuple[tuple[str, str], ...]

    @functools.cached_property
    def tops(self) -> tuple[str, ...]:
        return tuple(top for top, _ in self.tiers)

    @functools.cached_property
    def _tier_of(self) -> dict[str, str]:
        return dict(self.tiers)

    def tier(self, top: str) -> str:
        return self._tier_of[top]


def _aliases(name: str, rng: random.Random, taken: set[str]) -> tuple[list[str], list[str]]:
    typos = names.typo_variants(name, rng, 2, avoid=taken)
    # 'kovani' -> 'ko vani': users often split made-up names where the syllables break.
    cut = rng.randint(2, len(name) - 2)
    split = f"{name[:cut]} {name[cut:]}"
    common = typos[:1]
    rare = typos[1:] + [split]
    taken.update(common + rare)
    return common, rare


def build_brands(rng: random.Random, count: int, tops: tuple[str, ...], taken: set[str],
                 premium_fraction: float = 0.35) -> tuple[Brand, ...]:
    """`count` brands spread evenly over `tops` (each sells in one or two), every top with at
    least two premium and two budget brands. `taken` holds words the names must avoid and is
    updated with the names and aliases."""
    if count < 4 * len(tops):
        raise ValueError(f"need at least {4 * len(tops)} brands for {len(tops)} top categories, "
                         f"got num_brands={count}")
    brand_names = names.unique_words(rng, count, taken, min_len=5, max_len=8)
    brands = []
    for i, name in enumerate(brand_names):
        home = tops[i % len(tops)]
        brand_tops = [home]
        if rng.random() < 0.4:
            brand_tops.append(rng.choice([t for t in tops if t != home]))
        # The first four brands of each top fix its tier floor: two premium, two budget.
        floor = i // len(tops)
        tiers = []
        for top in brand_tops:
            if top == home and floor < 4:
                tier = TIERS[floor % 2]
            else:
                tier = "premium" if rng.random() < premium_fraction else "budget"
            tiers.append((top, tier))
        common, rare = _aliases(name, rng, taken)
        brands.append(Brand(name, tuple(common), tuple(rare), tuple(tiers)))
    return tuple(brands)
