"""Gold step annotations: the facts each of the five CoT steps must state for a pair.

Facts are "key: value" with canonical lowercase values, so an offline verifier can match
them (she_jax.data.cot.normalize_fact). Steps 3 and 4 are exactly the rules' category match
and checks, and step 5 is `labels.label_from_checks` of them, so the judgment always
follows from steps 3-4. Kept short (a tiny model learns them): only the constraints the
query states, and the item's values for just those.
"""

from __future__ import annotations

from she_jax import special_tokens as st
from she_jax.data.shopworld.items import Item
from she_jax.data.shopworld.labels import Judgment
from she_jax.data.shopworld.queries import HARD_TYPES, QueryIntent

NO_CONSTRAINTS = "attributes: none stated"
NOT_COMPARED = "attributes: not compared"


def query_facts(intent: QueryIntent) -> list[str]:
    """Step 1: the wanted category, the need / product line / model behind it, the brand,
    stated attributes, the intent of a hard query and what it excludes or names."""
    facts = [f"category: {intent.category}"]
    if intent.need is not None:
        facts.append(f"need: {intent.need}")
    if intent.query_type in HARD_TYPES:
        facts.append(f"intent: {intent.query_type}")
    if intent.product_line is not None:
        facts.append(f"product line: {intent.product_line}")
    if intent.compatible_model is not None:
        facts.append(f"compatible model: {intent.compatible_model}")
    if intent.brand is not None:
        facts.append(f"brand: {intent.brand}")
    facts += [f"{key}: {value}" for key, value in intent.attributes]
    if intent.excluded is not None:
        facts.append(f"excluded {intent.excluded[0]}: {intent.excluded[1]}")
    if intent.reference_brand is not None:
        facts.append(f"reference brand: {intent.reference_brand}")
    return facts


def item_facts(intent: QueryIntent, item: Item, judgment: Judgment) -> list[str]:
    """Step 2: the item's category and brand (and model), and its value for each attribute
    the query constrains ('unspecified' when the title does not say)."""
    facts = [f"category: {item.category}", f"brand: {item.brand}"]
    if item.model is not None:
        facts.append(f"model: {item.model}")
    if judgment.category_match == "none":
        return facts
    for key, _ in intent.attributes:
        facts.append(f"{key}: {item.attr(key) or 'unspecified'}")
    if intent.excluded is not None and intent.excluded[0] != "brand":
        kind = intent.excluded[0]
        facts.append(f"{kind}: {item.attr(kind) or 'unspecified'}")
    if intent.reference_brand is not None:
        facts.append(f"tier: {item.tier}")
    return facts


def match_facts(judgment: Judgment) -> list[str]:
    """Step 4: one '<check>: yes|no|unspecified' per constraint."""
    if judgment.category_match == "none":
        return [NOT_COMPARED]
    if not judgment.checks:
        return [NO_CONSTRAINTS]
    return [f"{name}: {outcome}" for name, outcome in judgment.checks]


def annotate(intent: QueryIntent, item: Item, judgment: Judgment) -> dict[str, list[str]]:
    """{step_name: [fact, ...]} for the five steps of special_tokens.STEP_NAMES."""
    facts = (query_facts(intent), item_facts(intent, item, judgment),
             [f"category match: {judgment.category_match}"], match_facts(judgment),
             [f"label: {judgment.label}"])
    return dict(zip(st.STEP_NAMES, facts))


def checks_from_facts(step_facts: list[str]) -> list[tuple[str, str]]:
    """Inverse of `match_facts`: the (check, outcome) pairs stated by step-4 facts."""
    checks = []
    for fact in step_facts:
        key, _, value = fact.partition(": ")
        if fact not in (NO_CONSTRAINTS, NOT_COMPARED):
            checks.append((key, value))
    return checks

