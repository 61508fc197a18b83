"""AGRL rule-aware reward shaping: dense rewards per relevance criterion behind a hard gate.

Components of one rollout, each in [0, 1]:
  format           1 if the text is exactly in the CoT format (`ParsedCoT.format_valid`);
  query_category   step 'query' states the annotated 'category: ...' fact (R1's input);
  item_category    step 'item' states the annotated 'category: ...' fact;
  category_match   step 'category_match' states every annotated fact (the R1 decision);
  attribute_match  the share of annotated step-4 facts stated — each check (brand match,
                   color match, exclusion respected, ...) scored on its own (R2-R9);
  label            1 if the parsed label is the gold label.
The four middle components need the record's annotation (and the annotated fact); where it
is missing they do not exist, and the reward is the weighted mean over the components that
do: sum_k w_k c_k / sum_k w_k over present k. So an unannotated record is scored by format
and label alone, renormalised, and every record's reward lies in [0, 1] before the gate:
groups with and without annotations are on one scale (this matters for advantages that are
not divided by the group std), and `cap` means the same thing for both. Facts are matched
like the verifier's (`verifier.fact_hits`, `strict` by default, so hedging does not pay).

Hard gate, in this order:
  1. Wrong (or missing) label: gate 'zero' sets the reward to 0, 'cap' to min(reward, cap),
     'none' leaves it. Without it, right reasoning with a wrong label would still be paid.
  2. A business rule is violated (docs/relevance_rules.md): the reward becomes
     -rule_penalty (0 when rule_penalty is 0), whatever the gate. A rollout violates a
     rule when the rules make the pair a mismatch for a hard reason and the rollout still
     judges it relevant (a label in `relevant_labels`, by default L4 and L3); the rules
     and how their conditions are read: she_jax.rewards.rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from she_jax.data import cot
from she_jax.data.cot import ParsedCoT
from she_jax.rewards.outcome import check_batch, check_number
from she_jax.rewards.rules import RULES, rule_conditions  # noqa: F401  (re-exported)
from she_jax.rewards.verifier import fact_hits
from she_jax.special_tokens import LABELS

COMPONENTS = ("format", "query_category", "item_category", "category_match",
              "attribute_match", "label")
ANNOTATION_COMPONENTS = ("query_category", "item_category", "category_match", "attribute_match")
GATES = ("zero", "cap", "none")


def shaping_config() -> ml_collections.ConfigDict:
    """Defaults for `shaped_rewards`."""
    config = ml_collections.ConfigDict()
    weights = ml_collections.ConfigDict()
    weights.format = 0.1  # the text is exactly in the CoT format
    weights.query_category = 0.1  # step 1 states the query's category
    weights.item_category = 0.1  # step 2 states the item's category
    weights.category_match = 0.15  # step 3 states the right category relation
    weights.attribute_match = 0.15  # share of step-4 checks stated right
    weights.label = 0.4  # the final label is right
    config.weights = weights  # component weights (>= 0; format + label > 0); renormalised
    config.gate = "zero"  # on a wrong label: 'zero' | 'cap' (min(reward, cap)) | 'none'
    config.cap = 0.3  # the most a wrong-label rollout earns with gate='cap'
    config.rules = RULES  # business rules enforced by the hard gate (a subset of RULES)
    config.relevant_labels = ("L4", "L3")  # labels that judge an item relevant (rule checks)
    config.rule_penalty = 0.5  # a rule-violating rollout gets -rule_penalty
    config.rules_without_annotations = True  # infer rule conditions from gold label + query type
    config.strict = True  # a stated value contradicting an annotated key fails that fact
    return config


def check_shaping_config(config: Mapping[str, Any]) -> None:
    """ValueError naming the bad key."""
    weights = config["weights"]
    unknown = set(weights) ^ set(COMPONENTS)
    if unknown:
        raise ValueError(f"weights must have exactly the keys {COMPONENTS}; differs in "
                         f"{sorted(unknown)}")
    for name in COMPONENTS:
        check_number(weights, name, low=0.0, prefix="weights.")
    if weights["format"] + weights["label"] <= 0:
        raise ValueError("weights.format + weights.label must be > 0: they are the only "
                         "components of an unannotated record")
    if config["gate"] not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {config['gate']!r}")
    check_number(config, "cap", 0.0, 1.0)
    bad_rules = [r for r in config["rules"] if r not in RULES]
    if isinstance(config["rules"], str) or bad_rules:
        raise ValueError(f"rules must be a sequence of names from {RULES}, got "
                         f"{config['rules']!r}")
    relevant = config["relevant_labels"]
    if isinstance(relevant, str) or not relevant or any(l not in LABELS for l in relevant):
        raise ValueError(f"relevant_labels must be a non-empty sequence of labels from "
                         f"{LABELS}, got {relevant!r}")
    check_number(config, "rule_penalty", low=0.0)
    for key in ("rules_without_annotations", "strict"):
        if not isinstance(config[key], bool):
            raise ValueError(f"{key} must be a bool, got {config[key]!r}")


def _facts(annotations: Mapping[str, Sequence[str]], step: str) -> list[str]:
    return list(annotations.get(step) or ())


def _category_facts(annotations: Mapping[str, Sequence[str]], step: str) -> list[str]:
    return [f for f in _facts(annotations, step) if cot.normalize_fact(f).startswith("category: ")]


def _rollout_components(rollout: ParsedCoT, record: Mapping, strict: bool
                        ) -> tuple[dict[str, float], dict[str, bool]]:
    values = {"format": float(rollout.format_valid),
              "label": float(rollout.label == record["label"])}
    present = {"format": True, "label": True}
    annotations = record.get("annotations")
    if annotations is None:
        return values, present
    annotated = {"query_category": ("query", _category_facts(annotations, "query")),
                 "item_category": ("item", _category_facts(annotations, "item")),
                 "category_match": ("category_match", _facts(annotations, "category_match")),
                 "attribute_match": ("attribute_match", _facts(annotations, "attribute_match"))}
    for name, (step, facts) in annotated.items():
        present[name] = bool(facts)
        if facts:
            hits = fact_hits(rollout.steps.get(step), facts, strict)
            # Every criterion but attribute_match is one decision: all its facts or nothing.
            values[name] = float(hits.mean() if name == "attribute_match" else hits.all())
    return values, present


def shaped_rewards(parsed: Sequence[Sequence[ParsedCoT]], records: Sequence[Mapping],
                   config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Rule-aware shaped reward of every rollout (module docstring).

    Args:
      parsed: [B][G] parsed rollouts; records: [B] with 'label', 'query_type',
        'annotations' (or None).
      config: `shaping_config()` or an override of it.

    Returns, all [B, G]:
      '<component>' float32 for each of COMPONENTS (0 where the component does not exist),
      '<component>_present' bool for each of ANNOTATION_COMPONENTS,
      'violation_<rule>' bool for each enforced rule, 'rule_violation' bool (any),
      'gate_applied' bool (wrong label under gate 'zero' or 'cap'), 'reward' float32.
    """
    config = shaping_config() if config is None else config
    check_shaping_config(config)
    batch, group = check_batch(parsed, records)
    weights = config["weights"]
    values = {name: np.zeros((batch, group)) for name in COMPONENTS}
    present = {name: np.zeros((batch, group), dtype=bool) for name in COMPONENTS}
    violations = {rule: np.zeros((batch, group), dtype=bool) for rule in config["rules"]}
    relevant = set(config["relevant_labels"])
    for b, (row, record) in enumerate(zip(parsed, records)):
        conditions = rule_conditions(record, config["rules_without_annotations"])
        for g, rollout in enumerate(row):
            rollout_values, rollout_present = _rollout_components(rollout, record,
                                                                  config["strict"])
            for name, value in rollout_values.items():
                values[name][b, g] = value
            for name, is_present in rollout_present.items():
                present[name][b, g] = is_present
            for rule in violations:
                violations[rule][b, g] = conditions[rule] and rollout.label in relevant

    weighted = sum(weights[name] * values[name] * present[name] for name in COMPONENTS)
    total = sum(weights[name] * present[name] for name in COMPONENTS)
    reward = weighted / total
    label_wrong = values["label"] == 0.0
    if config["gate"] == "zero":
        reward = np.where(label_wrong, 0.0, reward)
    elif config["gate"] == "cap":
        reward = np.where(label_wrong, np.minimum(reward, config["cap"]), reward)
    rule_violation = np.zeros((batch, group), dtype=bool)
    for violated in violations.values():
        rule_violation |= violated
    reward = np.where(rule_violation, -config["rule_penalty"], reward)

    out = {name: values[name].astype(np.float32) for name in COMPONENTS}
    out.update({f"{name}_present": present[name] for name in ANNOTATION_COMPONENTS})
    out.update({f"violation_{rule}": violated for rule, violated in violations.items()})
    out["rule_violation"] = rule_violation
    out["gate_applied"] = label_wrong & (config["gate"] != "none")
    out["reward"] = reward.astype(np.float32)
    return out


def shaping_metrics(shaped: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Scalar logging metrics of `shaped_rewards` output.

    'shaping/reward_mean', 'shaping/reward_std'; 'shaping/<component>': mean over the
    rollouts where the component exists (0.0 when none); 'shaping/rule_violation',
    'shaping/violation/<rule>', 'shaping/gate_applied': rates over all rollouts.
    """
    reward = np.asarray(shaped["reward"], dtype=np.float64)
    out = {"shaping/reward_mean": float(reward.mean()), "shaping/reward_std": float(reward.std())}
    for name in COMPONENTS:
        value = np.asarray(shaped[name], dtype=np.float64)
        mask = np.asarray(shaped.get(f"{name}_present", np.ones(value.shape, dtype=bool)))
        out[f"shaping/{name}"] = float(value[mask].mean()) if mask.any() else 0.0
    for key, array in shaped.items():
        if key.startswith("violation_"):
            out[f"shaping/violation/{key.removeprefix('violation_')}"] = float(np.mean(array))
    out["shaping/rule_violation"] = float(np.mean(shaped["rule_violation"]))
    out["shaping/gate_applied"] = float(np.mean(shaped["gate_applied"]))
    return out
