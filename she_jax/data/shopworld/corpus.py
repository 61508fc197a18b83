"""Texts for training a SentencePiece tokenizer on ShopWorld."""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Sequence

from she_jax.data.shopworld.world import World


def _world_texts(world: World) -> Iterator[str]:
    for leaf in world.taxonomy.leaves:
        yield " ".join((leaf.top, leaf.parent) + leaf.common_terms + leaf.rare_terms
                       + leaf.common_typos + leaf.rare_typos)
    for brand in world.brands:
        yield " ".join((brand.name,) + brand.common_aliases + brand.rare_aliases)
    for (brand, parent), line in world.knowledge.lines.items():
        yield f"{line} {brand} {parent}"
    for model in world.knowledge.models:
        yield (f"{model.name} {model.brand} {model.leaf} {model.chip or ''} "
               f"{model.connector}").strip()


def tokenizer_corpus(source: World | Mapping[str, Sequence[dict]] | Iterable[dict]
                     ) -> Iterator[str]:
    """Yields texts for tokenizer training.

    source: a World (taxonomy terms, brand names and aliases, lines, models, chips), a
    {split: records} dict, or an iterable of records (query, item title, and CoT when set).
    """
    if isinstance(source, World):
        yield from _world_texts(source)
        return
    records = (r for rs in source.values() for r in rs) if isinstance(source, Mapping) else source
    for record in records:
        yield record["query"]
        yield record["item_title"]
        if record.get("cot"):
            yield record["cot"]
