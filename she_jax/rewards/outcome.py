"""Outcome (sequence-level) rewards: is the final label right, is the output well formed.

Every reward module of she_jax.rewards works host-side on one RL step's rollouts:
  parsed: [B][G] `cot.ParsedCoT` (B prompts, G samples each), records: [B] record dicts,
and returns numpy arrays [B, G] (or [B, G, S] for step rewards). This module also holds the
checks the other reward modules share (`check_batch`, `check_number`).

Reward of one rollout:
    reward = correct_reward * correct + wrong_reward * (1 - correct)
             - format_weight * (1 - format_valid)
`correct` is the parsed label equal to the gold label; a rollout with no label token is
wrong. `format_valid` is `ParsedCoT.format_valid` (the text is exactly in the CoT format).
The format term is a penalty, never a bonus: a well-formed rollout gets exactly the label
reward, so `format_weight` = 0 gives the plain GRPO correctness reward, and a badly formed
but correct rollout still beats every wrong one as long as format_weight is below
correct_reward - wrong_reward.

Optional rule penalty (`rule_penalty` > 0; AGRL's hard rule gate on the plain reward): a
rollout that judges relevant (L4/L3) a pair a business rule makes a mismatch
(she_jax.rewards.rules) gets wrong_reward - rule_penalty, so among wrong answers the
rule-breaking ones are pushed down most. A correct rollout never violates a rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from she_jax.data.cot import ParsedCoT
from she_jax.rewards import rules
from she_jax.special_tokens import LABELS


def outcome_config() -> ml_collections.ConfigDict:
    """Defaults for `outcome_rewards`."""
    config = ml_collections.ConfigDict()
    config.correct_reward = 1.0  # reward of a rollout whose parsed label is the gold label
    config.wrong_reward = 0.0  # reward of a wrong label or of a rollout with no label token
    config.format_weight = 0.1  # subtracted once when the text is not exactly in the CoT format
    # > 0: a rollout judging relevant a pair a business rule makes a mismatch gets
    # wrong_reward - rule_penalty (she_jax.rewards.rules; 0 = off).
    config.rule_penalty = 0.0
    return config


def check_number(config: Mapping[str, Any], key: str, low: float | None = None,
                 high: float | None = None, prefix: str = "") -> float:
    """config[key] as a float; ValueError naming `prefix + key` unless finite and in [low, high]."""
    name = prefix + key
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def check_outcome_config(config: Mapping[str, Any]) -> None:
    """ValueError naming the bad key."""
    correct = check_number(config, "correct_reward")
    wrong = check_number(config, "wrong_reward")
    if correct <= wrong:
        raise ValueError(f"correct_reward ({correct}) must be greater than wrong_reward ({wrong})")
    check_number(config, "format_weight", low=0.0)
    if "rule_penalty" in config:
        check_number(config, "rule_penalty", low=0.0)


def check_batch(parsed: Sequence[Sequence[ParsedCoT]],
                records: Sequence[Mapping]) -> tuple[int, int]:
    """Validates one step's rollouts; returns (B, G).

    parsed: [B][G] ParsedCoT, every row of one length G >= 1; records: [B] dicts whose 'label'
    is one of LABELS. ValueError naming `parsed` or `records` otherwise.
    """
    if len(parsed) == 0:
        raise ValueError("parsed is empty: expected [B][G] ParsedCoT with B >= 1")
    if len(records) != len(parsed):
        raise ValueError(f"parsed has {len(parsed)} prompts but records has {len(records)}")
    group = len(parsed[0])
    if group == 0:
        raise ValueError("parsed[0] is empty: expected G >= 1 samples per prompt")
    for b, row in enumerate(parsed):
        if len(row) != group:
            raise ValueError(f"parsed[{b}] has {len(row)} samples but parsed[0] has {group}")
        for g, item in enumerate(row):
            if not isinstance(item, ParsedCoT):
                raise ValueError(f"parsed[{b}][{g}] is a {type(item).__name__}, not a ParsedCoT")
    for b, record in enumerate(records):
        if record.get("label") not in LABELS:
            raise ValueError(f"records[{b}]['label'] = {record.get('label')!r} is not one of "
                             f"{LABELS}")
    return len(parsed), group


def outcome_rewards(parsed: Sequence[Sequence[ParsedCoT]], records: Sequence[Mapping],
                    config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Label-correctness reward with a format penalty (module docstring).

    Args:
      parsed: [B][G] parsed rollouts; records: [B] records with the gold 'label'.
      config: `outcome_config()` or an override of it.

    Returns:
      {'correct': [B, G] bool, 'has_label': [B, G] bool (a label token was parsed),
       'format_valid': [B, G] bool, 'rule_violation': [B, G] bool (a relevant label where
       a rule makes the pair a mismatch), 'reward': [B, G] float32}.
    """
    config = outcome_config() if config is None else config
    check_outcome_config(config)
    batch, group = check_batch(parsed, records)
    correct = np.zeros((batch, group), dtype=bool)
    has_label = np.zeros((batch, group), dtype=bool)
    format_valid = np.zeros((batch, group), dtype=bool)
    violation = np.zeros((batch, group), dtype=bool)
    for b, (row, record) in enumerate(zip(parsed, records)):
        rule_case = any(rules.rule_conditions(record, rules_without_annotations=True).values())
        for g, rollout in enumerate(row):
            correct[b, g] = rollout.label == record["label"]
            has_label[b, g] = rollout.label is not None
            format_valid[b, g] = rollout.format_valid
            violation[b, g] = rule_case and rollout.label in rules.RELEVANT_LABELS
    right = correct.astype(np.float64)
    reward = (config["correct_reward"] * right + config["wrong_reward"] * (1.0 - right)
              - config["format_weight"] * (1.0 - format_valid)
              - config.get("rule_penalty", 0.0) * violation)
    return {"correct": correct, "has_label": has_label, "format_valid": format_valid,
            "rule_violation": violation, "reward": reward.astype(np.float32)}


def outcome_metrics(outcome: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Scalar logging metrics of `outcome_rewards` output.

    'reward/mean', 'reward/std' (over all B*G rollouts), 'reward/accuracy',
    'reward/has_label', 'reward/format_valid' (rates), 'reward/group_all_correct',
    'reward/group_all_wrong' (share of prompts whose G rollouts are all right / all wrong:
    groups that carry no GRPO signal), 'reward/rule_violation' (rate over the rollouts).
    """
    correct = np.asarray(outcome["correct"], dtype=bool)
    reward = np.asarray(outcome["reward"], dtype=np.float64)
    return {
        "reward/mean": float(reward.mean()),
        "reward/std": float(reward.std()),
        "reward/accuracy": float(correct.mean()),
        "reward/has_label": float(np.mean(outcome["has_label"])),
        "reward/format_valid": float(np.mean(outcome["format_valid"])),
        "reward/group_all_correct": float(np.mean(correct.all(axis=1))),
        "reward/group_all_wrong": float(np.mean(~correct.any(axis=1))),
        "reward/rule_violation": float(np.mean(outcome.get("rule_violation", False))),
    }
