"""The category taxonomy: top > parent > leaf, with synonyms, misspellings and needs.

Hand-written base vocabulary (original); misspellings are generated from the seed. A leaf's
*parent* defines its siblings (close substitutes, rule R9) and, through `PROFILE_OF_PARENT`
(overridable per leaf), which attributes its items carry.
"""

from __future__ import annotations

import dataclasses
import random

from she_jax.data.shopworld import attributes, names

# {top: {parent: (attribute profile, ["leaf|synonym|synonym", ...])}}. The first synonyms
# are the common ones (seen in SFT); the last of three or more is rare (tail only).
TAXONOMY: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "apparel": {
        "tops": ("clothing", ("t-shirts|tee shirts|tees", "polo shirts|polos|golf shirts",
                              "hoodies|hooded sweatshirts|pullover hoodie",
                              "sweaters|jumpers|knitwear", "blouses|womens shirts",
                              "tank tops|sleeveless tops|singlets")),
        "bottoms": ("clothing", ("jeans|denim pants|denims", "chinos|chino pants|khakis",
                                 "shorts|short pants", "leggings|yoga pants|tights",
                                 "skirts|midi skirts", "sweatpants|joggers|track pants")),
        "outerwear": ("clothing", ("down jackets|puffer jackets|puffer coats",
                                   "rain jackets|waterproof jackets|rain shells",
                                   "trench coats|trenchcoats", "blazers|suit jackets",
                                   "windbreakers|wind jackets", "fleece jackets|fleeces")),
        "dresses": ("clothing", ("maxi dresses|long dresses", "cocktail dresses|party dresses",
                                 "sundresses|summer dresses", "wedding dresses|bridal gowns")),
        "sleep and underwear": ("clothing", ("pajamas|pyjamas|sleepwear", "socks|ankle socks",
                                             "bras|bralettes", "boxers|boxer briefs")),
    },
    "shoes": {
        "athletic shoes": ("footwear", ("running shoes|jogging shoes|runners",
                                        "trail running shoes|trail runners",
                                        "basketball shoes|hoops shoes|basketball sneakers",
                                        "tennis shoes|court shoes",
                                        "walking shoes|walkers|fitness walking shoes",
                                        "training shoes|gym shoes|cross trainers")),
        "boots": ("footwear", ("hiking boots|trekking boots|hikers",
                               "rain boots|wellies|rubber boots", "snow boots|winter boots",
                               "chelsea boots|ankle boots", "work boots|safety boots")),
        "casual shoes": ("footwear", ("sneakers|casual sneakers|trainers",
                                      "loafers|penny loafers", "slip-on shoes|slip ons",
                                      "canvas shoes|plimsolls")),
        "sandals and slippers": ("footwear", ("flip flops|thongs sandals", "slides|slide sandals",
                                              "house slippers|indoor slippers",
                                              "sport sandals|hiking sandals")),
        "formal shoes": ("footwear", ("oxford shoes|oxfords|dress shoes",
                                      "high heels|heels|stilettos", "ballet flats|flats")),
    },
    "bags and accessories": {
        "bags": ("bag", ("backpacks|rucksacks|daypacks", "handbags|purses",
                         "tote bags|totes|shopper bags", "crossbody bags|sling bags",
                         "duffel bags|gym bags|holdalls", "laptop bags|laptop backpacks",
                         "wallets|billfolds")),
        "fashion accessories": ("accessory", ("sunglasses|shades|sun glasses",
                                              "baseball caps|caps|dad hats",
                                              "beanies|knit hats|winter hats", "scarves|mufflers",
                                              "belts|waist belts", "gloves|mittens")),
        "jewelry and watches": ("jewelry", ("wristwatches|watches|analog watches",
                                            "necklaces|pendants|chains", "earrings|studs",
                                            "rings|band rings", "bracelets|bangles")),
    },
    "electronics": {
        "mobile devices": ("device", ("smartphones|mobile phones|cell phones",
                                      "tablets|tablet computers|pads",
                                      "e-readers|ebook readers")),
        "phone accessories": ("phone accessory", ("phone cases|phone covers|mobile cases",
                                                  "screen protectors|screen guards",
                                                  "chargers|wall chargers|charging adapters",
                                                  "charging cables|usb cables|charger cords",
                                                  "power banks|portable chargers|battery packs",
                                                  "phone holders|phone stands")),
        "audio": ("audio", ("wireless earbuds|earbuds|true wireless earphones",
                            "over-ear headphones|headphones|headsets",
                            "bluetooth speakers|portable speakers", "soundbars|sound bars")),
        "computers": ("computer", ("laptops|notebook computers|notebooks pc",
                                   "monitors|computer screens|displays",
                                   "keyboards|mechanical keyboards", "computer mice|mouse|mice",
                                   "webcams|web cameras", "usb flash drives|thumb drives")),
        "wearables": ("wearable", ("smartwatches|smart watches", "fitness trackers|activity bands",
                                   "smart rings|health rings")),
    },
    "home appliances": {
        "kitchen appliances": ("appliance", ("air fryers|airfryers|oil-free fryers",
                                             "blenders|smoothie makers",
                                             "coffee makers|coffee machines|espresso machines",
                                             "electric kettles|kettles",
                                             "rice cookers|rice makers",
                                             "microwaves|microwave ovens",
                                             "toasters|toaster ovens")),
        "household appliances": ("appliance", ("vacuum cleaners|vacuums|hoovers",
                                               "robot vacuums|robotic vacuum cleaners",
                                               "air purifiers|air cleaners",
                                               "humidifiers|mist makers",
                                               "electric fans|fans|desk fans",
                                               "space heaters|electric heaters")),
        "personal care appliances": ("small appliance", ("hair dryers|blow dryers|hairdryers",
                                                         "electric toothbrushes|sonic toothbrushes",
                                                         "electric shavers|razors|shavers",
                                                         "hair straighteners|flat irons")),
    },
    "home and kitchen": {
        "cookware": ("cookware", ("frying pans|skillets|fry pans", "saucepans|sauce pots",
                                  "woks|stir fry pans", "stock pots|soup pots")),
        "tableware": ("tableware", ("dinner plates|plates", "coffee mugs|mugs|cups",
                                    "wine glasses|stemware", "bowls|soup bowls")),
        "bedding": ("bedding", ("bed sheets|sheet sets|fitted sheets", "duvets|comforters|quilts",
                                "pillows|bed pillows", "blankets|throws|throw blankets")),
        "home decor": ("decor", ("table lamps|bedside lamps|night lamps",
                                 "wall clocks|clocks", "curtains|drapes|window curtains",
                                 "rugs|area rugs|carpets", "vases|flower vases")),
        "home storage": ("storage", ("storage boxes|storage bins|organizer boxes",
                                     "shoe racks|shoe shelves", "clothes hangers|hangers")),
    },
    "beauty": {
        "skincare": ("beauty", ("face moisturizers|face creams|moisturisers",
                                "sunscreens|sunblock|spf lotions",
                                "facial cleansers|face wash|cleansing foam",
                                "face serums|serums|essences")),
        "makeup": ("makeup", ("lipsticks|lip sticks|lip colors", "foundations|liquid foundations",
                              "mascaras|lash mascaras", "eyeshadow palettes|eye shadows")),
        "fragrance": ("fragrance", ("perfumes|eau de parfum|scents", "colognes|eau de toilette")),
        "hair care": ("hair care", ("shampoos|hair shampoos", "conditioners|hair conditioners",
                                    "hair oils|hair serums")),
    },
    "sports and outdoors": {
        "fitness equipment": ("fitness", ("yoga mats|exercise mats|pilates mats",
                                          "dumbbells|hand weights|free weights",
                                          "resistance bands|exercise bands",
                                          "jump ropes|skipping ropes")),
        "camping gear": ("camping", ("tents|camping tents|dome tents",
                                     "sleeping bags|sleeping sacks",
                                     "camping chairs|folding chairs", "headlamps|head torches")),
        "cycling": ("cycling", ("road bikes|racing bikes|road bicycles",
                                "bike helmets|cycling helmets", "bike lights|bicycle lights")),
        "swimming": ("swim", ("swimsuits|swimwear|bathing suits", "swim goggles|goggles",
                              "swim caps|swimming caps")),
        "ball sports": ("ball sports", ("basketballs|basket balls", "soccer balls|footballs",
                                        "tennis rackets|tennis racquets",
                                        "badminton rackets|badminton racquets")),
    },
    "toys and baby": {
        "toys": ("toy", ("building blocks|building bricks|construction toys",
                         "plush toys|stuffed animals|soft toys", "toy cars|model cars",
                         "jigsaw puzzles|puzzles", "board games|tabletop games")),
        "baby care": ("baby", ("diapers|nappies", "baby bottles|feeding bottles",
                               "strollers|prams|pushchairs", "baby carriers|baby slings",
                               "pacifiers|dummies|soothers")),
    },
    "pet supplies": {
        "dog supplies": ("pet gear", ("dog food|dog kibble|puppy food", "dog leashes|dog leads",
                                      "dog beds|dog cushions", "dog toys|chew toys")),
        "cat supplies": ("pet gear", ("cat food|cat kibble|kitten food", "cat litter|kitty litter",
                                      "cat trees|cat towers|cat condos", "cat toys|kitten toys")),
    },
    "food and drinks": {
        "snacks": ("food", ("potato chips|crisps", "cookies|biscuits",
                            "chocolate bars|chocolate", "mixed nuts|nuts|trail mix")),
        "beverages": ("beverage", ("green tea|green tea bags", "coffee beans|whole bean coffee",
                                   "sparkling water|soda water|seltzer",
                                   "energy drinks|energy beverages")),
        "pantry": ("pantry", ("olive oil|extra virgin olive oil", "pasta|spaghetti|dried pasta",
                            "instant noodles|ramen|cup noodles", "honey|raw honey")),
    },
    "office and school": {
        "writing supplies": ("stationery", ("ballpoint pens|ball pens|biros",
                                            "fountain pens|ink pens", "pencils|wooden pencils",
                                            "highlighters|highlighter pens")),
        "paper products": ("stationery", ("notebooks|notepads|exercise books",
                                          "sticky notes|post-it notes",
                                          "printer paper|copy paper")),
        "office furniture": ("furniture", ("office chairs|desk chairs|ergonomic chairs",
                                           "standing desks|sit stand desks",
                                           "bookshelves|bookcases")),
    },
    "automotive": {
        "car accessories": ("auto", ("car phone mounts|car phone holders",
                                     "car seat covers|seat covers", "dash cams|dashboard cameras",
                                     "car air fresheners|car fresheners")),
        "car care": ("auto", ("car wax|car polish", "tire inflators|tyre pumps|air compressors",
                              "car vacuums|handheld car vacuums")),
    },
}

# Leaves whose items need another profile than their parent's.
LEAF_PROFILES = {"chargers": "charging", "charging cables": "charging",
                 "power banks": "power bank", "dog food": "pet", "cat food": "pet",
                 "cat litter": "pet", "e-readers": "device", "laptops": "computer",
                 "keyboards": "peripheral", "computer mice": "peripheral",
                 "webcams": "peripheral", "usb flash drives": "computer",
                 "monitors": "computer"}

# Leaves whose items are numbered models of a product line (knowledge: model -> brand,
# model -> chip, model -> connector).
MODEL_LEAVES = ("smartphones", "tablets", "laptops", "smartwatches", "e-readers")
# Leaves whose items carry a chip fact (knowledge query "phone with <chip>").
CHIP_LEAVES = ("smartphones", "tablets", "laptops")
# Accessory leaves a knowledge query "charger for <model>" asks for: the item's connector
# must be the model's connector.
CONNECTOR_LEAVES = ("chargers", "charging cables", "power banks")

# Q&A needs: leaf -> need phrases. The first is common (SFT), the rest rare (tail only).
NEEDS: dict[str, tuple[str, ...]] = {
    "running shoes": ("a marathon", "my first 10k race", "jogging every morning"),
    "trail running shoes": ("running on muddy mountain trails", "a trail ultra"),
    "basketball shoes": ("playing basketball", "pickup games on the court"),
    "hiking boots": ("a mountain hike", "a trek in the alps"),
    "rain boots": ("walking in heavy rain", "muddy garden work"),
    "snow boots": ("a snowy winter", "walking on ice and snow"),
    "work boots": ("a construction site job", "warehouse work"),
    "flip flops": ("a beach holiday", "the pool deck"),
    "house slippers": ("staying warm at home", "lounging around the house"),
    "high heels": ("a formal gala", "a prom night"),
    "down jackets": ("a freezing winter", "skiing trip cold weather"),
    "rain jackets": ("a rainy commute", "hiking in the drizzle"),
    "blazers": ("a job interview", "a business meeting"),
    "wedding dresses": ("my wedding day", "getting married"),
    "cocktail dresses": ("a cocktail party", "a friend's birthday party"),
    "pajamas": ("a sleepover", "sleeping comfortably"),
    "swimsuits": ("a swimming lesson", "a day at the beach"),
    "swim goggles": ("swimming laps", "open water swimming"),
    "leggings": ("a yoga class", "pilates sessions"),
    "sunglasses": ("a sunny road trip", "bright summer days"),
    "beanies": ("keeping my head warm", "a cold ski weekend"),
    "backpacks": ("the first day of school", "a weekend city trip"),
    "duffel bags": ("going to the gym", "a weekend getaway"),
    "laptop bags": ("carrying my computer to work", "a business trip with a laptop"),
    "wristwatches": ("a graduation gift for him", "an anniversary present"),
    "smartphones": ("replacing my broken phone", "taking photos and calls"),
    "tablets": ("drawing digital art", "watching movies on the train"),
    "e-readers": ("reading books on vacation", "reading in bed at night"),
    "screen protectors": ("protecting my phone screen", "stopping screen scratches"),
    "power banks": ("charging my phone while traveling", "a long flight with no outlet"),
    "wireless earbuds": ("listening to music at the gym", "taking calls on the go"),
    "over-ear headphones": ("blocking noise in the office", "a long flight"),
    "bluetooth speakers": ("a backyard party", "music at the beach"),
    "laptops": ("college coursework", "working from home"),
    "webcams": ("video calls", "live streaming"),
    "smartwatches": ("tracking my workouts", "getting notifications on my wrist"),
    "air fryers": ("cooking crispy food without oil", "healthy frying"),
    "coffee makers": ("brewing coffee at home", "my morning espresso"),
    "electric kettles": ("boiling water fast", "making tea quickly"),
    "rice cookers": ("cooking perfect rice", "making sushi rice"),
    "robot vacuums": ("cleaning floors automatically", "pet hair while i am away"),
    "air purifiers": ("allergies at home", "smoky air in the bedroom"),
    "humidifiers": ("dry air in winter", "a dry bedroom"),
    "space heaters": ("a cold room", "heating a small office"),
    "hair dryers": ("drying my hair quickly", "salon blowouts at home"),
    "frying pans": ("cooking eggs", "searing steaks"),
    "woks": ("making stir fry", "cooking fried rice"),
    "coffee mugs": ("my morning coffee", "hot chocolate"),
    "duvets": ("a warm bed in winter", "cozy nights"),
    "curtains": ("blocking sunlight in the bedroom", "privacy at the window"),
    "sunscreens": ("protecting skin at the beach", "sun protection outdoors"),
    "face moisturizers": ("dry flaky skin", "hydrating my face"),
    "shampoos": ("washing my hair", "an itchy scalp"),
    "yoga mats": ("doing yoga at home", "a stretching routine"),
    "dumbbells": ("strength training at home", "building arm muscles"),
    "tents": ("a camping trip", "sleeping outdoors"),
    "sleeping bags": ("camping in the cold", "a night under the stars"),
    "headlamps": ("night hiking", "seeing in the dark while camping"),
    "bike helmets": ("riding a bike safely", "a cycling commute"),
    "road bikes": ("a cycling race", "riding fast on roads"),
    "tennis rackets": ("learning tennis", "playing at the tennis club"),
    "building blocks": ("a creative gift for a child", "building projects with kids"),
    "board games": ("family game night", "a party with friends"),
    "strollers": ("walking with my newborn", "a new baby"),
    "baby bottles": ("feeding a newborn", "bottle feeding"),
    "dog food": ("feeding my puppy", "a hungry dog"),
    "dog leashes": ("walking my dog", "training a puppy to walk"),
    "cat litter": ("a new kitten's litter box", "controlling litter box odor"),
    "cat trees": ("a cat that scratches furniture", "a bored indoor cat"),
    "green tea": ("a healthy drink", "relaxing in the afternoon"),
    "energy drinks": ("staying awake for exams", "a late night shift"),
    "instant noodles": ("a quick late night meal", "a college dorm dinner"),
    "notebooks": ("taking class notes", "journaling"),
    "office chairs": ("back pain at my desk", "long hours at the computer"),
    "standing desks": ("sitting too much at work", "working on my feet"),
    "dash cams": ("recording my drives", "proof in a car accident"),
    "tire inflators": ("a flat tire", "keeping tires pumped"),
}


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A leaf category. name: canonical (what annotations state); common_terms / rare_terms:
    synonyms and misspellings (common ones appear in SFT; rare ones only in RL and tests)."""
    name: str
    parent: str
    top: str
    profile: str
    common_terms: tuple[str, ...]
    rare_terms: tuple[str, ...]
    common_typos: tuple[str, ...]
    rare_typos: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Taxonomy:
    leaves: tuple[Leaf, ...]

    def __post_init__(self):
        object.__setattr__(self, "_by_name", {leaf.name: leaf for leaf in self.leaves})
        by_parent: dict[str, list[Leaf]] = {}
        for leaf in self.leaves:
            by_parent.setdefault(leaf.parent, []).append(leaf)
        object.__setattr__(self, "_by_parent", {p: tuple(v) for p, v in by_parent.items()})

    def leaf(self, name: str) -> Leaf:
        return self._by_name[name]

    def siblings(self, name: str) -> tuple[Leaf, ...]:
        leaf = self._by_name[name]
        return tuple(s for s in self._by_parent[leaf.parent] if s.name != name)

    @property
    def parents(self) -> tuple[str, ...]:
        return tuple(self._by_parent)

    @property
    def tops(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(leaf.top for leaf in self.leaves))

    def profile(self, name: str) -> dict[str, tuple[str, ...]]:
        return attributes.PROFILES[self._by_name[name].profile]


def build_taxonomy(rng: random.Random, max_leaves_per_parent: int | None = None) -> Taxonomy:
    """The taxonomy with seeded misspellings; `max_leaves_per_parent` shrinks it for tests.

    Raises ValueError if two leaves share a name or a term (a term must name one leaf).
    """
    leaves: list[Leaf] = []
    seen_terms: dict[str, str] = {}
    # A typo must not be a real term or word ('short' for 'shorts' is a word of 'short pants').
    real = {t for ps in TAXONOMY.values() for _, entries in ps.values() for e in entries
            for t in e.split("|")}
    real |= {w for t in real for w in t.split()}
    for top, parents in TAXONOMY.items():
        for parent, (profile, entries) in parents.items():
            for entry in entries[:max_leaves_per_parent]:
                name, *synonyms = entry.split("|")
                for term in (name, *synonyms):
                    if term in seen_terms:
                        raise ValueError(f"taxonomy term {term!r} names both "
                                         f"{seen_terms[term]!r} and {name!r}")
                    seen_terms[term] = name
                common = (name,) + tuple(synonyms[:1] if len(synonyms) >= 2 else synonyms)
                rare = tuple(synonyms[1:]) if len(synonyms) >= 2 else ()
                typos = names.typo_variants(name, rng, 4, avoid=real)
                leaves.append(Leaf(name=name, parent=parent, top=top,
                                   profile=LEAF_PROFILES.get(name, profile),
                                   common_terms=common, rare_terms=rare,
                                   common_typos=tuple(typos[:1]), rare_typos=tuple(typos[1:])))
    unknown = (set(NEEDS) | set(LEAF_PROFILES) | set(MODEL_LEAVES) | set(CONNECTOR_LEAVES)) \
        - real
    if unknown:
        raise ValueError(f"taxonomy.py names unknown leaves: {sorted(unknown)}")
    return Taxonomy(tuple(leaves))
