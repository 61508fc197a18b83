"""Items: what a product is (leaf, brand, tier, attribute values, model) and its noisy,
keyword-stuffed marketplace title."""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from she_jax.data.shopworld import attributes
from she_jax.data.shopworld.taxonomy import Leaf

PROMOS = ("hot sale", "new arrival", "free shipping", "2024 new", "limited offer",
          "best seller", "official store", "fast delivery", "high quality", "top rated",
          "clearance", "flash deal", "hot sale 2024 free shipping")
# Generic selling words stuffed into titles, per top-level category.
DESCRIPTORS = {
    "apparel": ("comfortable", "breathable", "soft", "slim fit", "all season", "trendy"),
    "shoes": ("lightweight", "breathable", "non slip", "cushioned", "comfortable", "durable"),
    "bags and accessories": ("fashion", "large capacity", "waterproof", "gift", "durable"),
    "electronics": ("fast", "wireless", "portable", "long battery", "hd", "smart", "5g"),
    "home appliances": ("energy saving", "quiet", "smart", "household", "portable"),
    "home and kitchen": ("household", "durable", "easy clean", "modern", "nordic"),
    "beauty": ("natural", "long lasting", "moisturizing", "gentle", "vegan"),
    "sports and outdoors": ("outdoor", "professional", "portable", "durable", "training"),
    "toys and baby": ("safe", "educational", "gift", "soft", "bpa free"),
    "pet supplies": ("healthy", "durable", "all breeds", "pet safe", "natural"),
    "food and drinks": ("healthy", "family pack", "imported", "fresh", "snack"),
    "office and school": ("student", "office", "smooth", "bulk pack", "ergonomic"),
    "automotive": ("universal", "car", "easy install", "portable", "durable"),
}
# Attribute values written before the category term; the rest (sizes, specs) come after it.
_BEFORE_TERM = ("gender", "color", "material", "style", "finish", "flavor")


@dataclasses.dataclass(frozen=True)
class Item:
    """A product. attributes: ((key, canonical value), ...) for everything the item is known
    to have (stated in the title, or implied by its model through a knowledge fact); an
    attribute absent here is unspecified. tier: the brand's tier in the item's top category."""
    category: str
    parent: str
    brand: str
    tier: str
    attributes: tuple[tuple[str, str], ...] = ()
    model: str | None = None
    line: str | None = None
    title: str = ""

    def attr(self, key: str) -> str | None:
        for k, v in self.attributes:
            if k == key:
                return v
        return None


def _attribute_phrase(key: str, value: str, rng: random.Random) -> str:
    if key == "chip":
        return f"{value} {rng.choice(('chip', 'processor', 'chipset'))}"
    return attributes.surface(key, value, rng)


def render_title(rng: random.Random, item: Item, leaf: Leaf, *, show_brand: bool = True,
                 show_line: bool = False, hidden: frozenset[str] = frozenset(),
                 mentions: Sequence[str] = (), stuffed_terms: Sequence[str] = (),
                 noise: float = 1.0) -> str:
    """A marketplace title: [promo] [brand] [line | model] [attrs] term [specs] [stuffing]
    [promo]. hidden: attribute keys the title leaves out (knowledge facts such as the chip);
    mentions: phrases that name other brands or values ('nike style', 'leather-free');
    stuffed_terms: other categories' keywords; noise: scales how often promo phrases,
    repeated keywords and selling words are added (0 = none). The item's own category term
    always comes before any stuffed one, as the first category term is what a title sells."""
    parts: list[str] = []
    if rng.random() < 0.2 * noise:
        parts.append(rng.choice(PROMOS))
    if show_brand:
        parts.append(item.brand)
    if item.model is not None:
        parts.append(item.model)
    elif show_line and item.line is not None:
        parts.append(item.line)
    shown = [(k, v) for k, v in item.attributes if k not in hidden]
    before = [(k, v) for k, v in shown if k in _BEFORE_TERM]
    after = [(k, v) for k, v in shown if k not in _BEFORE_TERM]
    rng.shuffle(before)
    parts.extend(_attribute_phrase(k, v, rng) for k, v in before)
    parts.append(leaf.common_terms[0] if rng.random() < 0.75 else rng.choice(leaf.common_terms))
    parts.extend(_attribute_phrase(k, v, rng) for k, v in after)
    stuffing = list(mentions) + list(stuffed_terms)
    if rng.random() < 0.5 * noise:
        stuffing.append(rng.choice(leaf.common_terms + leaf.rare_terms))  # repeated keyword
    if rng.random() < noise:
        stuffing.extend(rng.sample(DESCRIPTORS[leaf.top], rng.randint(0, 2)))
    rng.shuffle(stuffing)
    parts.extend(stuffing)
    if rng.random() < 0.5 * noise:
        parts.append(rng.choice(PROMOS))
    return " ".join(parts)
