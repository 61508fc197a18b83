"""The business rules a relevance judgment must not break, as conditions on a record.

A pair is a rule case when the relevance rules (docs/relevance_rules.md) make it a mismatch
for a hard reason; judging such a pair relevant (L4 or L3) violates the rule:
  'negation'    R4: the query excludes a brand/material/color and the item has it;
  'alternative' R5: an affordable-alternative query, and the item is the reference brand
                or premium;
  'category'    R1: the item's category does not match the query's (gold L1).
The condition is read from the annotation (query 'excluded K: V' with item 'K: V', or step 4
'exclusion respected: no'; step 4 'cheaper alternative: no'; step 3 'category match:
none'). Without an annotation and with `rules_without_annotations`, it is read from the
gold label: in ShopWorld a negation or alternative query has its exclusion / alternative
check as its only key check, so gold L2 on such a query means that check failed, and L1
means exactly R1's 'none' (tested on the data). Turn it off for data whose query types do
not carry that meaning.

Used by AGRL's shaped reward (she_jax.rewards.shaping), by the optional rule penalty of the
plain outcome reward (she_jax.rewards.outcome, `rule_penalty`) and by the evaluation's
rule-violation rate (she_jax.eval.rules).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from she_jax.data import cot

RULES = ("negation", "alternative", "category")
RELEVANT_LABELS = ("L4", "L3")  # the labels that judge an item relevant


def _facts(annotations: Mapping[str, Sequence[str]], step: str) -> set[str]:
    return {cot.normalize_fact(f) for f in annotations.get(step) or ()}


def rule_conditions(record: Mapping, rules_without_annotations: bool) -> dict[str, bool]:
    """{rule: the rules make this pair a mismatch for that rule's reason} (module docstring)."""
    annotations = record.get("annotations")
    if annotations is None:
        if not rules_without_annotations:
            return {rule: False for rule in RULES}
        label, query_type = record["label"], record.get("query_type")
        return {"negation": query_type == "negation" and label == "L2",
                "alternative": query_type == "alternative" and label == "L2",
                "category": label == "L1"}
    query, item = _facts(annotations, "query"), _facts(annotations, "item")
    checks = _facts(annotations, "attribute_match")
    item_has_excluded = any(f.removeprefix("excluded ") in item
                            for f in query if f.startswith("excluded "))
    return {"negation": item_has_excluded or "exclusion respected: no" in checks,
            "alternative": "cheaper alternative: no" in checks,
            "category": "category match: none" in _facts(annotations, "category_match")}
