"""ShopWorld: the embedded e-commerce relevance world (docs/shopworld.md).

    cfg = WorldConfig.preset('tiny')
    splits = generate_splits(cfg)            # {split: [record, ...]} for every name in SPLITS
    world = build_world(cfg); rl = generate_split(world, 'rl')

Records follow the she_jax data schema (id, query, item_title, label, query_type,
popularity, annotations, cot); labels come from the rules of docs/relevance_rules.md.
"""

from she_jax.data.shopworld.config import WorldConfig
from she_jax.data.shopworld.corpus import tokenizer_corpus
from she_jax.data.shopworld.items import Item
from she_jax.data.shopworld.labels import Judgment, judge, label_from_checks
from she_jax.data.shopworld.queries import HARD_TYPES, QUERY_TYPES, QueryIntent, normalize_query
from she_jax.data.shopworld.splits import SPLITS, TEST_SPLITS, generate_split, generate_splits
from she_jax.data.shopworld.world import World, build_world

__all__ = ["WorldConfig", "World", "build_world", "generate_split", "generate_splits", "SPLITS",
           "TEST_SPLITS", "tokenizer_corpus", "QueryIntent", "Item", "Judgment", "judge",
           "label_from_checks", "QUERY_TYPES", "HARD_TYPES", "normalize_query"]
