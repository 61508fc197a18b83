"""Attribute vocabularies: which attributes each kind of product has, their canonical values,
and the surface forms titles and queries write them with.

Canonical values are lowercase strings ("red", "men", "256gb"); they are what annotations
state. A surface form is how a title or query spells the value ("mens", "256 gb").
"""

from __future__ import annotations

import random

COLORS = ("black", "white", "red", "blue", "green", "pink", "grey", "beige", "navy",
          "purple", "yellow", "brown", "orange")
GENDERS = ("men", "women", "kids")
STYLES = ("casual", "sporty", "vintage", "classic", "minimalist", "streetwear", "business")

# Attributes whose mismatch makes an exact-category item a close substitute (L3), not a
# mismatch (L2): they are preferences, not the product's identity. See docs/relevance_rules.md.
MINOR_ATTRIBUTES = frozenset({"style", "material"})

# Attributes a stated query value is checked against (everything in a profile); 'chip' and
# 'connector' also come from knowledge facts (a model's chip, a model's port).
PROFILES: dict[str, dict[str, tuple[str, ...]]] = {
    "clothing": {"color": COLORS, "gender": GENDERS, "size": ("xs", "s", "m", "l", "xl", "xxl"),
                 "material": ("cotton", "linen", "wool", "polyester", "silk", "denim", "fleece"),
                 "style": STYLES},
    "footwear": {"color": COLORS, "gender": GENDERS,
                 "size": tuple(str(s) for s in range(36, 47)),
                 "material": ("leather", "faux leather", "mesh", "canvas", "suede", "rubber"),
                 "style": STYLES},
    "bag": {"color": COLORS, "material": ("leather", "faux leather", "canvas", "nylon",
                                          "polyester"),
            "capacity": ("10l", "20l", "30l", "40l"), "style": STYLES},
    "accessory": {"color": COLORS, "gender": GENDERS,
                  "material": ("leather", "faux leather", "cotton", "wool", "metal", "plastic"),
                  "style": STYLES},
    "jewelry": {"color": ("gold", "silver", "rose gold", "black"), "gender": GENDERS,
                "material": ("sterling silver", "stainless steel", "titanium", "gold plated"),
                "style": STYLES},
    "device": {"color": ("black", "white", "blue", "green", "purple", "silver", "gold"),
               "storage": ("64gb", "128gb", "256gb", "512gb", "1tb")},
    "computer": {"color": ("black", "silver", "grey", "white"),
                 "storage": ("256gb", "512gb", "1tb", "2tb"),
                 "screen size": ("13 inch", "14 inch", "15 inch", "16 inch")},
    "peripheral": {"color": ("black", "white", "grey", "pink"), "style": STYLES,
                   "connector": ("usb-c", "micro-usb", "flexport", "magsnap")},
    "phone accessory": {"color": COLORS,
                        "material": ("silicone", "leather", "plastic", "tempered glass"),
                        "style": STYLES},
    "charging": {"wattage": ("20w", "33w", "45w", "65w", "100w"),
                 "connector": ("usb-c", "micro-usb", "flexport", "magsnap"),
                 "color": ("black", "white")},
    "power bank": {"capacity": ("5000mah", "10000mah", "20000mah", "30000mah"),
                   "connector": ("usb-c", "micro-usb", "flexport", "magsnap"),
                   "color": ("black", "white", "blue")},
    "wearable": {"color": ("black", "white", "pink", "green", "silver"), "style": STYLES,
                 "connector": ("usb-c", "micro-usb", "flexport", "magsnap")},
    "audio": {"color": ("black", "white", "blue", "pink", "silver"), "style": STYLES,
              "connector": ("usb-c", "micro-usb", "flexport", "magsnap")},
    "appliance": {"color": ("black", "white", "silver", "red"),
                  "wattage": ("600w", "800w", "1000w", "1500w", "2000w"),
                  "capacity": ("1l", "1.5l", "2l", "3l", "5l")},
    "small appliance": {"color": ("black", "white", "pink", "silver"),
                        "wattage": ("5w", "10w", "1200w", "1800w")},
    "cookware": {"color": ("black", "silver", "red"), "size": ("20cm", "24cm", "28cm", "32cm"),
                 "material": ("stainless steel", "cast iron", "aluminum", "ceramic",
                              "carbon steel")},
    "tableware": {"color": ("white", "black", "blue", "green", "beige"),
                  "material": ("ceramic", "glass", "porcelain", "bamboo", "stainless steel"),
                  "style": STYLES},
    "bedding": {"color": ("white", "grey", "beige", "navy", "pink"),
                "size": ("single", "double", "queen", "king"),
                "material": ("cotton", "linen", "silk", "microfiber", "wool")},
    "decor": {"color": ("white", "black", "gold", "green", "beige"),
              "material": ("wood", "metal", "glass", "ceramic", "rattan"), "style": STYLES},
    "storage": {"color": ("white", "black", "grey", "beige"),
                "material": ("plastic", "wood", "metal", "fabric", "bamboo")},
    "beauty": {"volume": ("30ml", "50ml", "100ml", "200ml"),
               "skin type": ("dry skin", "oily skin", "sensitive skin", "combination skin")},
    "makeup": {"color": ("nude", "red", "pink", "brown", "black", "coral"),
               "finish": ("matte", "glossy", "satin")},
    "fragrance": {"volume": ("30ml", "50ml", "100ml"), "gender": ("men", "women")},
    "hair care": {"volume": ("200ml", "400ml", "750ml"),
                  "hair type": ("dry hair", "oily hair", "curly hair", "colored hair")},
    "fitness": {"color": COLORS, "weight": ("1kg", "2kg", "5kg", "10kg", "20kg"),
                "material": ("rubber", "neoprene", "steel", "foam")},
    "camping": {"color": ("green", "orange", "blue", "grey"), "capacity": ("1 person",
                "2 person", "4 person", "6 person"), "material": ("nylon", "polyester",
                                                             "aluminum")},
    "cycling": {"color": ("black", "white", "red", "blue"),
                "size": ("s", "m", "l"), "material": ("carbon", "aluminum", "steel")},
    "swim": {"color": COLORS, "gender": GENDERS, "size": ("s", "m", "l", "xl"),
             "style": STYLES},
    "ball sports": {"color": ("white", "orange", "black", "yellow"), "size": ("3", "4", "5", "7"),
                    "material": ("leather", "rubber", "carbon", "aluminum")},
    "toy": {"age": ("3+", "6+", "8+", "12+"), "material": ("wood", "plastic", "plush", "metal"),
            "color": ("red", "blue", "yellow", "pink", "green")},
    "baby": {"size": ("newborn", "0-6 months", "6-12 months", "12-24 months"),
             "material": ("cotton", "silicone", "plastic", "bamboo")},
    "pet": {"size": ("small", "medium", "large"),
            "flavor": ("chicken", "beef", "salmon", "lamb", "turkey")},
    "pet gear": {"size": ("small", "medium", "large"), "color": COLORS,
                 "material": ("nylon", "leather", "cotton", "plush", "rope")},
    "food": {"flavor": ("original", "spicy", "sea salt", "barbecue", "honey", "chocolate",
                        "vanilla"), "weight": ("100g", "250g", "500g", "1kg")},
    "pantry": {"weight": ("250g", "500g", "1kg", "2kg"),
               "origin": ("italy", "spain", "greece", "japan", "thailand")},
    "beverage": {"flavor": ("original", "lemon", "peach", "mint", "berry", "unsweetened"),
                 "volume": ("330ml", "500ml", "1l")},
    "stationery": {"color": ("black", "blue", "red", "pink", "green"),
                   "size": ("a4", "a5", "a6")},
    "furniture": {"color": ("black", "white", "grey", "brown", "beige"),
                  "material": ("wood", "metal", "mesh", "leather", "bamboo"), "style": STYLES},
    "auto": {"color": ("black", "grey", "beige", "red"),
             "material": ("leather", "faux leather", "fabric", "plastic", "silicone")},
}

_GENDER_SURFACES = {"men": (("mens", "men's", "for men"), ("male", "gents")),
                    "women": (("womens", "women's", "for women"), ("female", "ladies")),
                    "kids": (("kids", "for kids"), ("children's", "boys girls"))}
_LETTER_SIZES = frozenset({"xs", "s", "m", "l", "xl", "xxl"})


def surface(attribute: str, value: str, rng: random.Random, rare: bool = False) -> str:
    """How a title or query writes `attribute=value`. rare=True may pick an uncommon form
    (kept out of the SFT split)."""
    if attribute == "gender":
        common, uncommon = _GENDER_SURFACES[value]
        pool = common + uncommon if rare else common
        return rng.choice(pool)
    if attribute == "size" and (value.isdigit() or value in _LETTER_SIZES):
        # A bare 'm' or '42' would be unreadable in a title.
        return ("eu " if rare and value.isdigit() else "size ") + value
    if attribute in ("storage", "wattage", "capacity", "volume", "weight") and rare:
        # '256gb' -> '256 gb'
        digits = value.rstrip("abcdefghijklmnopqrstuvwxyz")
        if digits and digits != value:
            return f"{digits} {value[len(digits):]}"
    if attribute == "connector":
        return value + rng.choice((" port", "", " charging"))
    return value
