"""SRPO's offline annotated verifier: is each reasoning step right, by the human annotation.

A record's annotation lists, per step, the facts the step must state ("category: beds").
A step of a rollout is verified when the record has an annotation for that step (`known`);
it is `correct` when:
  - the rollout has the step (a step the parser did not find is a failed step), and
  - every annotated fact is stated, after `cot.normalize_fact` (case, punctuation and
    spacing do not matter; extra facts with other keys are allowed), and
  - with `strict`, no stated fact gives an annotated key a value the annotation does not
    have, and
  - for the judgment step, also the parsed label token is the gold label.

Why `strict` exists: `cot.facts_match` (the evaluation's step check) only asks that every
annotated fact be stated, so "category: beds; category: sofas" passes when "category:
beds" is annotated. That is right for measuring step accuracy, but a policy optimised
against it can learn to hedge by listing several values. `strict` closes that hole; it is
the default for rewards (`verifier_config`), while `verify_steps` defaults to the lenient
check so it agrees with `she_jax.eval.metrics.step_correctness`. Stating a wrong value
*instead of* the annotated one fails under both (the annotated fact is missing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from she_jax.data import cot
from she_jax.data.cot import ParsedCoT
from she_jax.rewards.outcome import check_batch
from she_jax.special_tokens import STEP_NAMES

JUDGMENT = STEP_NAMES.index("judgment")


def verifier_config() -> ml_collections.ConfigDict:
    """Defaults for `verify_batch`."""
    config = ml_collections.ConfigDict()
    config.strict = True  # a stated value that contradicts an annotated key fails the step
    return config


def check_verifier_config(config: Mapping[str, Any]) -> None:
    """ValueError naming the bad key."""
    if not isinstance(config["strict"], bool):
        raise ValueError(f"strict must be a bool, got {config['strict']!r}")


def _key_value(normalized_fact: str) -> tuple[str | None, str]:
    key, sep, value = normalized_fact.partition(": ")
    return (key, value) if sep else (None, normalized_fact)


def fact_hits(stated: Sequence[str] | None, annotated: Sequence[str], strict: bool) -> np.ndarray:
    """Which annotated facts a step gets right.

    stated: the step's facts in the rollout, None when the rollout lacks the step;
    annotated: [F] the annotated facts of that step. Returns [F] bool: fact f is stated
    (normalized), and with `strict` no stated fact gives f's key a value the annotation
    does not list for that key.
    """
    if stated is None:
        return np.zeros(len(annotated), dtype=bool)
    stated_norm = {cot.normalize_fact(f) for f in stated}
    annotated_norm = [cot.normalize_fact(f) for f in annotated]
    allowed: dict[str, set[str]] = {}
    for fact in annotated_norm:
        key, value = _key_value(fact)
        if key is not None:
            allowed.setdefault(key, set()).add(value)
    contradicted: set[str] = set()
    if strict:
        for fact in stated_norm:
            key, value = _key_value(fact)
            if key in allowed and value not in allowed[key]:
                contradicted.add(key)
    return np.array([fact in stated_norm and _key_value(fact)[0] not in contradicted
                     for fact in annotated_norm], dtype=bool)


def _check_annotations(annotations: Mapping[str, Sequence[str]]) -> None:
    unknown = set(annotations) - set(STEP_NAMES)
    if unknown:
        raise ValueError(f"annotations has unknown step names {sorted(unknown)}; expected a "
                         f"subset of {STEP_NAMES}")


def verify_steps(parsed: ParsedCoT, annotations: Mapping[str, Sequence[str]] | None,
                 gold_label: str, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Verifies the five steps of one rollout against its record's annotation.

    Returns (correct [S] bool, known [S] bool) in STEP_NAMES order: known = the annotation
    has the step; correct = the step passes (module docstring), always False where unknown.
    """
    correct = np.zeros(len(STEP_NAMES), dtype=bool)
    known = np.zeros(len(STEP_NAMES), dtype=bool)
    if annotations is None:
        return correct, known
    _check_annotations(annotations)
    for s, name in enumerate(STEP_NAMES):
        if name not in annotations:
            continue
        known[s] = True
        stated = parsed.steps.get(name)
        correct[s] = stated is not None and bool(np.all(fact_hits(stated, annotations[name],
                                                                  strict)))
        if s == JUDGMENT:
            correct[s] &= parsed.label == gold_label
    return correct, known


def verify_batch(parsed: Sequence[Sequence[ParsedCoT]], records: Sequence[Mapping],
                 config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """`verify_steps` over one RL step's rollouts.

    Args:
      parsed: [B][G] parsed rollouts; records: [B] with 'label' and 'annotations' (or None).
      config: `verifier_config()` or an override of it.

    Returns:
      {'step_correct': [B, G, S] bool, 'step_known': [B, G, S] bool (the same for every g),
       'step_present': [B, G, S] bool (the rollout has the step, annotated or not),
       'annotated': [B] bool (the record has annotations)}.
    """
    config = verifier_config() if config is None else config
    check_verifier_config(config)
    batch, group = check_batch(parsed, records)
    shape = (batch, group, len(STEP_NAMES))
    step_correct = np.zeros(shape, dtype=bool)
    step_known = np.zeros(shape, dtype=bool)
    step_present = np.zeros(shape, dtype=bool)
    annotated = np.zeros(batch, dtype=bool)
    for b, (row, record) in enumerate(zip(parsed, records)):
        annotations = record.get("annotations")
        annotated[b] = annotations is not None
        for g, rollout in enumerate(row):
            step_correct[b, g], step_known[b, g] = verify_steps(
                rollout, annotations, record["label"], strict=config["strict"])
            step_present[b, g] = [name in rollout.steps for name in STEP_NAMES]
    return {"step_correct": step_correct, "step_known": step_known,
            "step_present": step_present, "annotated": annotated}


def verifier_metrics(verified: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Scalar logging metrics of `verify_batch` output.

    'verifier/coverage': share of records with annotations; 'verifier/known_steps': how many
    (rollout, step) pairs were verified; 'verifier/step_acc/<step>': accuracy over the
    verified rollouts of that step (0.0 when none, so every key is always logged);
    'verifier/all_steps_acc': share of annotated rollouts with every known step right.
    """
    correct = np.asarray(verified["step_correct"], dtype=bool)
    known = np.asarray(verified["step_known"], dtype=bool)
    out = {"verifier/coverage": float(np.mean(verified["annotated"])),
           "verifier/known_steps": float(known.sum())}
    for s, name in enumerate(STEP_NAMES):
        count = known[..., s].sum()
        out[f"verifier/step_acc/{name}"] = float(correct[..., s].sum() / count) if count else 0.0
    rollout_annotated = known.any(axis=-1)
    all_right = np.all(correct | ~known, axis=-1)[rollout_annotated]
    out["verifier/all_steps_acc"] = float(all_right.mean()) if all_right.size else 0.0
    return out
