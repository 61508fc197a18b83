"""Business-rule violations of predictions, an evaluation metric of every method.

A prediction violates a rule when the relevance rules (docs/relevance_rules.md) make the
pair a mismatch for a hard reason and the model still judges it relevant (L4 or L3):
  'negation'    R4: the item has what a negation query excludes;
  'alternative' R5: an affordable-alternative query, and the item is the reference brand
                or a premium one;
  'category'    R1: the item is of another category (gold L1).
The conditions are those of AGRL's rule-aware reward (`she_jax.rewards.rules`, read from
the record's annotation, or from its gold label and query type when it has none), so the
rate AGRL trains against is measured for SFT, DPO, GRPO and SRPO on the same examples.

Per split, eval.json gets 'rule_violation' {'rate': violations / examples a rule applies
to, 'n_applicable', 'n_violations', 'rate_overall': violations / all examples, 'by_rule':
{rule: {'n_applicable', 'rate'}}} and 'rule_violation_rate' (= rate); predictions.jsonl
gets 'rule_applies' and 'rule_violation' per example, which the cross-run report
bootstraps. `backfill` adds both to a run evaluated before they existed, from its
predictions and its data, without re-generating anything:

  python -m she_jax.eval.rules runs/grpo [runs/srpo ...]
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from she_jax.rewards.rules import RELEVANT_LABELS, RULES, rule_conditions
from she_jax.special_tokens import LABELS


def rule_flags(records: Sequence[Mapping], y_pred: Any) -> dict[str, np.ndarray]:
    """Per example: {'applies': [N] bool (some rule makes the pair a mismatch),
    'violated': [N] bool (and the prediction is relevant), '<rule>': [N] bool (that rule
    applies)}. y_pred: [N] class ids in LABELS order, -1 for no label."""
    pred = np.asarray(y_pred)
    if pred.shape != (len(records),):
        raise ValueError(f"y_pred has shape {pred.shape}, expected ({len(records)},)")
    relevant_ids = [LABELS.index(label) for label in RELEVANT_LABELS]
    out = {rule: np.zeros(len(records), bool) for rule in RULES}
    for i, record in enumerate(records):
        for rule, holds in rule_conditions(record, rules_without_annotations=True).items():
            out[rule][i] = holds
    applies = np.logical_or.reduce([out[rule] for rule in RULES])
    out["applies"] = applies
    out["violated"] = applies & np.isin(pred, relevant_ids)
    return out


def rule_violation_summary(flags: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The eval.json 'rule_violation' entry of one split (module docstring)."""
    applies, violated = np.asarray(flags["applies"]), np.asarray(flags["violated"])
    n, n_applicable, n_violations = applies.size, int(applies.sum()), int(violated.sum())
    by_rule = {}
    for rule in RULES:
        mask = np.asarray(flags[rule])
        count = int(mask.sum())
        by_rule[rule] = {"n_applicable": count,
                         "rate": float(violated[mask].mean()) if count else None}
    return {"rate": n_violations / n_applicable if n_applicable else None,
            "n_applicable": n_applicable, "n_violations": n_violations,
            "rate_overall": n_violations / n if n else None, "by_rule": by_rule}


def add_to_entry(entry: dict, flags: Mapping[str, np.ndarray]) -> dict:
    """Sets entry['rule_violation'] and entry['rule_violation_rate']; returns entry."""
    entry["rule_violation"] = rule_violation_summary(flags)
    entry["rule_violation_rate"] = entry["rule_violation"]["rate"]
    return entry


def backfill(workdir: str, splits: Mapping[str, Sequence[Mapping]] | None = None) -> list[str]:
    """Adds the rule fields to <workdir>/predictions.jsonl and eval.json from the predictions
    already there; `splits` {name: records}, default: the run's own data (its config.json).
    Returns the splits filled. The gold labels of the predictions must match the data's
    (else ValueError naming the example), so a run is never scored against other data."""
    from she_jax import run_dir
    from she_jax.eval import report
    from she_jax.eval.runs_index import PREDICTIONS_FILE, _read_jsonl

    pred_path = os.path.join(workdir, PREDICTIONS_FILE)
    eval_path = os.path.join(workdir, run_dir.EVAL_FILE)
    for path in (pred_path, eval_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not found (backfill needs an evaluated run)")
    eval_dict = report.read_eval_json(eval_path)
    rows = [row for _, row in _read_jsonl(pred_path)]
    if splits is None:
        from she_jax.data import sources

        splits = sources.load_splits(run_dir.load_config(workdir).data)
    by_split: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_split.setdefault(row["split"], []).append(i)
    filled = []
    for split, indices in by_split.items():
        if split not in splits:
            raise ValueError(f"{pred_path}: split {split!r} is not in the run's data")
        records = {r["id"]: r for r in splits[split]}
        chosen = []
        for i in indices:
            row = rows[i]
            record = records.get(row["id"])
            if record is None:
                raise ValueError(f"{pred_path}: {split} example {row['id']!r} is not in the data")
            if LABELS.index(record["label"]) != row["label"]:
                raise ValueError(f"{pred_path}: {split} example {row['id']!r} has gold label "
                                 f"{row['label']} but the data says {record['label']}")
            chosen.append(record)
        flags = rule_flags(chosen, [rows[i]["pred"] for i in indices])
        for k, i in enumerate(indices):
            rows[i]["rule_applies"] = bool(flags["applies"][k])
            rows[i]["rule_violation"] = bool(flags["violated"][k])
        if split in eval_dict["splits"]:
            add_to_entry(eval_dict["splits"][split], flags)
        filled.append(split)
    temporary = f"{pred_path}.tmp{os.getpid()}"
    with open(temporary, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(temporary, pred_path)
    report.write_eval_json(eval_path, eval_dict)
    return filled


def main(argv: Sequence[str]) -> int:
    if not argv or any(a.startswith("-") for a in argv):
        print("usage: python -m she_jax.eval.rules RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    for workdir in argv:
        try:
            filled = backfill(workdir)
        except (OSError, ValueError) as e:
            print(f"rules: {e}", file=sys.stderr)
            return 1
        print(f"rules: {workdir}: rule violations added for {', '.join(filled)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
