"""The relevance rules (docs/relevance_rules.md): (query intent, item) -> label.

`judge` is a pure function of a hand-buildable `QueryIntent` and `Item`, so every rule is
unit-tested on handcrafted pairs. It returns the category relation and the per-constraint
checks too, which are exactly the facts gold CoT steps 3 and 4 state; `label_from_checks`
derives the label from those facts alone, so the judgment always follows from steps 3-4.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from she_jax.data.shopworld.attributes import MINOR_ATTRIBUTES
from she_jax.data.shopworld.items import Item
from she_jax.data.shopworld.queries import QueryIntent

CATEGORY_MATCHES = ("exact", "sibling", "none")
OUTCOMES = ("yes", "no", "unspecified")
BRAND_CHECK = "brand match"
EXCLUSION_CHECK = "exclusion respected"
ALTERNATIVE_CHECK = "cheaper alternative"
MINOR_CHECKS = frozenset(f"{a} match" for a in MINOR_ATTRIBUTES)

# Which rule a violated check fires (the first violated check names the rule).
_VIOLATION_RULE = {BRAND_CHECK: "R2", EXCLUSION_CHECK: "R4", ALTERNATIVE_CHECK: "R5"}


@dataclasses.dataclass(frozen=True)
class Judgment:
    """label: 'L4'..'L1'; rule: the deciding rule ('R1'..'R10'); category_match: one of
    CATEGORY_MATCHES; checks: ((check name, outcome), ...) in the query's constraint order."""
    label: str
    rule: str
    category_match: str
    checks: tuple[tuple[str, str], ...]


def category_match(intent: QueryIntent, item: Item) -> str:
    """R1: 'exact' (same leaf), 'sibling' (same parent) or 'none'."""
    if item.category == intent.category:
        return "exact"
    return "sibling" if item.parent == intent.parent else "none"


def _compare(wanted: str, have: str | None) -> str:
    if have is None:
        return "unspecified"
    return "yes" if have == wanted else "no"


def constraint_checks(intent: QueryIntent, item: Item) -> tuple[tuple[str, str], ...]:
    """R2-R6: one (check, outcome) per constraint the query states or implies."""
    checks = []
    if intent.brand is not None:  # R2 (R6: also a brand implied by a product line)
        checks.append((BRAND_CHECK, _compare(intent.brand, item.brand)))
    for key, value in intent.attributes:  # R3 (R6: chip/connector implied by a model)
        checks.append((f"{key} match", _compare(value, item.attr(key))))
    if intent.excluded is not None:  # R4
        kind, value = intent.excluded
        have = item.brand if kind == "brand" else item.attr(kind)
        outcome = "unspecified" if have is None else ("no" if have == value else "yes")
        checks.append((EXCLUSION_CHECK, outcome))
    if intent.reference_brand is not None:  # R5
        cheaper = item.brand != intent.reference_brand and item.tier == "budget"
        checks.append((ALTERNATIVE_CHECK, "yes" if cheaper else "no"))
    return tuple(checks)


def label_from_checks(category: str, checks: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """(label, rule) from the step-3 category match and the step-4 checks, by precedence:
    R1 none -> L1; a violated key check (R2-R5) -> L2; R7 sibling -> L3; R8 a minor attribute
    (style, material) differs -> L3; R9 a stated key attribute the item does not state -> L3;
    R10 otherwise L4."""
    if category not in CATEGORY_MATCHES:
        raise ValueError(f"category match must be one of {CATEGORY_MATCHES}, got {category!r}")
    for name, outcome in checks:
        if outcome not in OUTCOMES:
            raise ValueError(f"check {name!r}: outcome must be one of {OUTCOMES}, got {outcome!r}")
    if category == "none":
        return "L1", "R1"
    for name, outcome in checks:
        if outcome == "no" and name not in MINOR_CHECKS:
            return "L2", _VIOLATION_RULE.get(name, "R3")
    if category == "sibling":
        return "L3", "R7"
    if any(outcome == "no" for _, outcome in checks):
        return "L3", "R8"
    if any(outcome == "unspecified" for _, outcome in checks):
        return "L3", "R9"
    return "L4", "R10"


def judge(intent: QueryIntent, item: Item) -> Judgment:
    """The label of (intent, item) by the rules of docs/relevance_rules.md."""
    category = category_match(intent, item)
    checks = () if category == "none" else constraint_checks(intent, item)
    label, rule = label_from_checks(category, checks)
    return Judgment(label=label, rule=rule, category_match=category, checks=checks)
