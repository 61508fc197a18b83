"""Splits: which queries each split draws, and the records it produces.

Query strings are partitioned by a seeded hash of their normalized text into test / dev /
train buckets, so no test or dev query string can appear in `sft` or `rl`, whatever sizes
are asked for. Label counts per split are exact (rounded from `label_mix`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random

from she_jax import special_tokens as st
from she_jax.data import cot
from she_jax.data.shopworld.annotate import annotate
from she_jax.data.shopworld.config import WorldConfig
from she_jax.data.shopworld.labels import judge
from she_jax.data.shopworld.pairs import item_for_target, write_title
from she_jax.data.shopworld.queries import normalize_query, sample_intent
from she_jax.data.shopworld.world import World, build_world, stream

SPLITS = ("sft", "rl", "dev", "test_head", "test_longtail", "test_negation",
          "test_alternative", "test_qa", "test_knowledge")
TEST_SPLITS = tuple(s for s in SPLITS if s.startswith("test_"))
NUM_BUCKETS = 1000
BUCKETS = {"test": range(0, 150), "dev": range(150, 200), "train": range(200, NUM_BUCKETS)}
_MAX_ATTEMPTS = 2000

_PLAIN = {"category": 0.35, "attribute": 0.35, "brand": 0.30}
_SFT_TYPES = {"category": 0.22, "attribute": 0.26, "brand": 0.20, "negation": 0.08,
              "alternative": 0.08, "qa": 0.08, "knowledge": 0.08}
_RL_TYPES = {"category": 0.10, "attribute": 0.15, "brand": 0.13, "negation": 0.15,
             "alternative": 0.15, "qa": 0.15, "knowledge": 0.17}


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """How a split draws queries. leaf_power: exponent on Zipf leaf traffic (1 = real traffic,
    head-heavy; 0.5 = wider coverage). rare_prob: share of rare phrasings. leaf_popularities:
    the leaves it may draw (None = all); popularities: the query popularities it keeps."""
    type_weights: dict[str, float]
    leaf_power: float
    rare_prob: float
    bucket: str
    leaf_popularities: tuple[str, ...] | None = None
    popularities: tuple[str, ...] | None = None
    all_annotated: bool = True


SPECS: dict[str, SplitSpec] = {
    "sft": SplitSpec(_SFT_TYPES, leaf_power=1.0, rare_prob=0.0, bucket="train"),
    "rl": SplitSpec(_RL_TYPES, leaf_power=0.5, rare_prob=0.35, bucket="train",
                    all_annotated=False),
    "dev": SplitSpec(_RL_TYPES, leaf_power=0.5, rare_prob=0.35, bucket="dev"),
    "test_head": SplitSpec(_PLAIN, leaf_power=1.0, rare_prob=0.0, bucket="test",
                           leaf_popularities=("head",), popularities=("head",)),
    "test_longtail": SplitSpec(_PLAIN, leaf_power=0.5, rare_prob=0.7, bucket="test",
                               leaf_popularities=("torso", "tail"), popularities=("tail",)),
    **{f"test_{t}": SplitSpec({t: 1.0}, leaf_power=0.5, rare_prob=0.5, bucket="test")
       for t in ("negation", "alternative", "qa", "knowledge")},
}


def split_size(cfg: WorldConfig, split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return cfg.test_size if split in TEST_SPLITS else getattr(cfg, f"{split}_size")


def query_bucket(seed: int, query: str) -> int:
    """The hash bucket of a query string (after normalize_query), in [0, NUM_BUCKETS)."""
    digest = hashlib.blake2b(f"{seed}:{normalize_query(query)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % NUM_BUCKETS


def label_targets(cfg: WorldConfig, size: int, rng: random.Random) -> list[str]:
    """Exactly round(size * fraction) of each label (largest remainders), shuffled."""
    raw = [size * p for p in cfg.label_mix]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])
    for i in by_remainder[:size - sum(counts)]:
        counts[i] += 1
    targets = [label for label, n in zip(st.LABELS, counts) for _ in range(n)]
    rng.shuffle(targets)
    return targets


def _pair(world: World, rng: random.Random, spec: SplitSpec, target: str):
    types, weights = zip(*spec.type_weights.items())
    allowed = BUCKETS[spec.bucket]
    for _ in range(_MAX_ATTEMPTS):
        query_type = rng.choices(types, weights)[0]
        intent = sample_intent(world, rng, query_type, leaf_power=spec.leaf_power,
                               rare=rng.random() < spec.rare_prob,
                               popularities=spec.leaf_popularities)
        if intent is None or (spec.popularities and intent.popularity not in spec.popularities):
            continue
        if query_bucket(world.config.seed, intent.text) not in allowed:
            continue
        hard = rng.random() < world.config.hard_case_prob
        item = item_for_target(world, rng, intent, target, hard)
        if item is None:
            continue
        judgment = judge(intent, item)
        if judgment.label == target:
            return intent, write_title(world, rng, intent, item, hard), judgment
    raise RuntimeError(f"ShopWorld could not draw a {target} pair in {_MAX_ATTEMPTS} attempts "
                       f"for split spec {spec}; the world is too small for it")


def generate_split(world: World, split: str) -> list[dict]:
    """The records of one split (schema of she_jax.data: id, query, item_title, label,
    query_type, popularity, annotations, cot); deterministic in (world.config, split)."""
    size = split_size(world.config, split)
    spec = SPECS[split]
    rng = stream(world.config.seed, "split", split)
    targets = label_targets(world.config, size, rng)
    if spec.all_annotated:
        annotated = set(range(size))
    else:
        annotated = set(rng.sample(range(size), round(size * world.config.annotation_fraction)))
    records = []
    for i, target in enumerate(targets):
        intent, item, judgment = _pair(world, rng, spec, target)
        annotations = annotate(intent, item, judgment) if i in annotated else None
        records.append({
            "id": f"shopworld-{split}-{i:06d}",
            "query": intent.text,
            "item_title": item.title,
            "label": judgment.label,
            "query_type": intent.query_type,
            "popularity": intent.popularity,
            "annotations": annotations,
            "cot": cot.render_cot(annotations, judgment.label, order="think_first")
                   if annotations else None,
        })
    return records


def generate_splits(cfg: WorldConfig) -> dict[str, list[dict]]:
    """Every split of SPLITS, from one world."""
    world = build_world(cfg)
    return {split: generate_split(world, split) for split in SPLITS}

