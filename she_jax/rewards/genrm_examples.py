"""Training examples of the generative step reward model (`she_jax.rewards.genrm`).

`build_genrm_examples` makes them, with per-step labels in the offline verifier's
(strict) semantics — a step is correct iff it states its annotated facts and no other value
for an annotated key (the judgment also needs the gold label token):
  * 'none': gold CoTs of annotated records, every step correct;
  * corrupted gold CoTs, one injected error each, the corrupted step labelled incorrect:
    'wrong_category' (the category of step 1 or 2 replaced by another real category),
    'wrong_attribute' (another fact value of step 1 or 2 — brand, colour, need, ... —
    replaced by a value the same key takes elsewhere in the data), 'wrong_match' (the
    category-match value of step 3 or a yes/no check of step 4 flipped),
    'inconsistent_judgment' (step 5 and the label token name a different label).
    Steps after an injected error are restated from the annotation, so they stay correct
    (the verifier judges each step against its own annotation, not against the steps
    before it) — except that with probability `match_error_propagation` a 'wrong_match'
    error propagates: the judgment is re-derived from the corrupted steps 3-4 by the
    ShopWorld rules, a chain that is consistent but wrong from the match on; the judgment
    is then incorrect iff the derived label differs from the gold one;
  * 'rollout': completions of the SFT policy, parsed and labelled per step by
    `verifier.verify_batch` (steps the annotation lacks carry no label).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from she_jax import special_tokens as st
from she_jax.data import cot
from she_jax.data.cot import ParsedCoT
from she_jax.data.shopworld import annotate, labels as rules
from she_jax.rewards import verifier

NUM_STEPS = len(st.STEP_NAMES)
GOLD_KIND = "none"
ROLLOUT_KIND = "rollout"
ERROR_KINDS = ("wrong_category", "wrong_attribute", "wrong_match", "inconsistent_judgment")
EXAMPLE_KINDS = (GOLD_KIND,) + ERROR_KINDS + (ROLLOUT_KIND,)

_QUERY, _ITEM, _CATEGORY_MATCH, _ATTRIBUTE_MATCH, _JUDGMENT = range(NUM_STEPS)
_CATEGORY_KEY = "category"
_CATEGORY_MATCH_KEY = "category match"
_NOT_ATTRIBUTES = (_CATEGORY_KEY, "intent")  # keys that 'wrong_attribute' leaves alone
_FLIPPED_OUTCOME = {"yes": ("no",), "no": ("yes",), "unspecified": ("yes", "no")}
# Tries per corrupted example before the builder gives up on finding a record the error
# applies to (every ShopWorld record takes every kind, so this only guards odd data).
_MAX_TRIES = 50


@dataclasses.dataclass(frozen=True)
class StepExample:
    """One CoT with per-step labels.

    steps: {step_name: [facts]} for the steps the CoT has; label: its label token ('L4'..)
    or None; correct / known: [5] bool in STEP_NAMES order (known: the step has a label —
    present in the CoT and annotated); kind: one of EXAMPLE_KINDS; record_id: the source
    record's id.
    """
    query: str
    item_title: str
    steps: dict[str, list[str]]
    label: str | None
    correct: tuple[bool, ...]
    known: tuple[bool, ...]
    kind: str
    record_id: str | None = None


# ------------------------------------------------------------------------------- examples


def _key_value(fact: str) -> tuple[str, str]:
    key, _, value = fact.partition(":")
    return key.strip(), value.strip()


def _same_fact(a: str, b: str) -> bool:
    return cot.normalize_fact(a) == cot.normalize_fact(b)


@dataclasses.dataclass(frozen=True)
class _FactPools:
    """Values seen in the data, to draw realistic wrong values from (sorted: deterministic).

    categories: every category of a query or item step; values: key -> values of the other
    query/item facts; category_matches: the values of the step-3 'category match' fact.
    """
    categories: tuple[str, ...]
    values: dict[str, tuple[str, ...]]
    category_matches: tuple[str, ...]


def _fact_pools(records: Sequence[Mapping]) -> _FactPools:
    categories, matches, values = set(), set(), {}
    for record in records:
        annotations = record.get("annotations") or {}
        for name in (st.STEP_NAMES[_QUERY], st.STEP_NAMES[_ITEM]):
            for fact in annotations.get(name, ()):
                key, value = _key_value(fact)
                if key == _CATEGORY_KEY:
                    categories.add(value)
                else:
                    values.setdefault(key, set()).add(value)
        for fact in annotations.get(st.STEP_NAMES[_CATEGORY_MATCH], ()):
            key, value = _key_value(fact)
            if key == _CATEGORY_MATCH_KEY:
                matches.add(value)
    return _FactPools(tuple(sorted(categories)), {k: tuple(sorted(v)) for k, v in values.items()},
                      tuple(sorted(matches)))


def _replace_value(steps: dict[str, list[str]], step: int, index: int,
                   choices: Sequence[str], rng: np.random.Generator) -> bool:
    """Sets fact `index` of `step` to 'key: v', v a choice that changes the fact; False if
    every choice leaves it the same."""
    facts = steps[st.STEP_NAMES[step]]
    key, _ = _key_value(facts[index])
    # A uniform draw among the changing choices, normalizing only until the first one.
    for choice in rng.permutation(len(choices)):
        candidate = f"{key}: {choices[choice]}"
        if not _same_fact(candidate, facts[index]):
            facts[index] = candidate
            return True
    return False


def _candidates(steps: dict[str, list[str]], step_ids: Sequence[int],
                wanted) -> list[tuple[int, int]]:
    """(step, fact index) of the facts of `step_ids` whose key satisfies `wanted(key)`."""
    return [(s, i) for s in step_ids for i, fact in enumerate(steps.get(st.STEP_NAMES[s], ()))
            if wanted(_key_value(fact)[0])]


def _corrupt_category(steps, pools, rng) -> int | None:
    found = _candidates(steps, (_QUERY, _ITEM), lambda key: key == _CATEGORY_KEY)
    if not found:
        return None
    step, index = found[rng.integers(len(found))]
    return step if _replace_value(steps, step, index, pools.categories, rng) else None


def _corrupt_attribute(steps, pools, rng) -> int | None:
    found = _candidates(steps, (_QUERY, _ITEM), lambda key: (
        key not in _NOT_ATTRIBUTES and len(pools.values.get(key, ())) > 1))
    if not found:
        return None
    step, index = found[rng.integers(len(found))]
    key, _ = _key_value(steps[st.STEP_NAMES[step]][index])
    return step if _replace_value(steps, step, index, pools.values[key], rng) else None


def _corrupt_match(steps, pools, rng) -> int | None:
    found = (_candidates(steps, (_CATEGORY_MATCH,), lambda key: key == _CATEGORY_MATCH_KEY)
             + [(s, i) for s, i in _candidates(steps, (_ATTRIBUTE_MATCH,), lambda key: True)
                if _key_value(steps[st.STEP_NAMES[s]][i])[1] in _FLIPPED_OUTCOME])
    if not found:
        return None
    step, index = found[rng.integers(len(found))]
    if step == _CATEGORY_MATCH:
        return step if _replace_value(steps, step, index, pools.category_matches, rng) else None
    outcome = _key_value(steps[st.STEP_NAMES[step]][index])[1]
    return step if _replace_value(steps, step, index, _FLIPPED_OUTCOME[outcome], rng) else None


def _corrupt_judgment(steps, pools, rng) -> int | None:
    del pools
    found = _candidates(steps, (_JUDGMENT,), lambda key: key == "label")
    if not found:
        return None
    step, index = found[0]
    return step if _replace_value(steps, step, index, st.LABELS, rng) else None


_CORRUPTIONS = {"wrong_category": _corrupt_category, "wrong_attribute": _corrupt_attribute,
                "wrong_match": _corrupt_match, "inconsistent_judgment": _corrupt_judgment}


def _rules_label(steps: Mapping[str, Sequence[str]]) -> str | None:
    """The label the ShopWorld rules derive from steps 3-4, or None if they do not apply."""
    category = [_key_value(f)[1] for f in steps.get(st.STEP_NAMES[_CATEGORY_MATCH], ())
                if _key_value(f)[0] == _CATEGORY_MATCH_KEY]
    if len(category) != 1:
        return None
    checks = annotate.checks_from_facts(list(steps.get(st.STEP_NAMES[_ATTRIBUTE_MATCH], ())))
    try:
        return rules.label_from_checks(category[0], checks)[0]
    except ValueError:
        return None


def _stated_label(steps: Mapping[str, Sequence[str]]) -> str | None:
    for fact in steps.get(st.STEP_NAMES[_JUDGMENT], ()):
        key, value = _key_value(fact)
        if key == "label" and value.upper() in st.LABELS:
            return value.upper()
    return None


def _corrupted_example(record: Mapping, kind: str, pools: _FactPools, propagation: float,
                       rng: np.random.Generator) -> StepExample | None:
    gold = record["annotations"]
    steps = {name: list(facts) for name, facts in gold.items()}
    step = _CORRUPTIONS[kind](steps, pools, rng)
    if step is None:
        return None
    correct = [True] * NUM_STEPS
    correct[step] = False
    if kind == "wrong_match" and rng.random() < propagation:
        # Only where the rules reproduce the gold label: then they define the judgment.
        derived = _rules_label(steps)
        if derived is not None and _rules_label(gold) == record["label"]:
            steps[st.STEP_NAMES[_JUDGMENT]] = [f"label: {derived}"]
            correct[_JUDGMENT] = derived == record["label"]
    label = _stated_label(steps) or record["label"]
    known = tuple(name in gold for name in st.STEP_NAMES)
    return StepExample(record["query"], record["item_title"], steps, label,
                       tuple(c and k for c, k in zip(correct, known)), known, kind,
                       record.get("id"))


def _gold_example(record: Mapping) -> StepExample:
    gold = record["annotations"]
    known = tuple(name in gold for name in st.STEP_NAMES)
    return StepExample(record["query"], record["item_title"],
                       {name: list(facts) for name, facts in gold.items()}, record["label"],
                       known, known, GOLD_KIND, record.get("id"))


def rollout_examples(parsed: Sequence[Sequence[ParsedCoT]],
                     records: Sequence[Mapping]) -> list[StepExample]:
    """Policy rollouts labelled by the offline verifier (strict), one example per rollout
    with at least one labelled step. parsed: [B][G]; records: [B] (annotated ones count)."""
    verified = verifier.verify_batch(parsed, records)
    examples = []
    for b, (row, record) in enumerate(zip(parsed, records)):
        for g, rollout in enumerate(row):
            known = verified["step_known"][b, g] & verified["step_present"][b, g]
            if not known.any():
                continue
            correct = verified["step_correct"][b, g] & known
            steps = {name: list(rollout.steps[name]) for name in st.STEP_NAMES
                     if name in rollout.steps}
            examples.append(StepExample(record["query"], record["item_title"], steps,
                                        rollout.label, tuple(map(bool, correct)),
                                        tuple(map(bool, known)), ROLLOUT_KIND,
                                        record.get("id")))
    return examples


def check_examples_config(config: Mapping[str, Any]) -> None:
    """ValueError naming the bad key of an examples config (see `build_genrm_examples`)."""
    for key in ("num_gold", "num_corrupted"):
        if int(config[key]) < 0:
            raise ValueError(f"{key} must be >= 0, got {config[key]}")
    mix = dict(config["error_mix"])
    unknown = sorted(set(mix) - set(ERROR_KINDS))
    if unknown:
        raise ValueError(f"error_mix has unknown error kinds {unknown}; known: {ERROR_KINDS}")
    weights = np.array([float(mix.get(k, 0.0)) for k in ERROR_KINDS])
    if (weights < 0).any() or (config["num_corrupted"] and weights.sum() <= 0):
        raise ValueError(f"error_mix weights must be >= 0 with a positive sum, got {mix}")
    if not 0.0 <= float(config["match_error_propagation"]) <= 1.0:
        raise ValueError("match_error_propagation must be in [0, 1], got "
                         f"{config['match_error_propagation']}")


def _error_kind_plan(config: Mapping[str, Any]) -> np.ndarray:
    """[num_corrupted] error kind indices in exact error_mix proportions (largest remainder)."""
    mix = dict(config["error_mix"])
    weights = np.array([float(mix.get(k, 0.0)) for k in ERROR_KINDS])
    quota = weights / weights.sum() * int(config["num_corrupted"])
    counts = np.floor(quota).astype(int)
    short = int(config["num_corrupted"]) - counts.sum()
    counts[np.argsort(counts - quota, kind="stable")[:short]] += 1
    return np.repeat(np.arange(len(ERROR_KINDS)), counts)


def build_genrm_examples(records: Sequence[Mapping], rng: np.random.Generator,
                         config: Mapping[str, Any],
                         rollouts: tuple[Sequence[Sequence[ParsedCoT]], Sequence[Mapping]]
                         | None = None) -> list[StepExample]:
    """Gold, corrupted and rollout examples (module docstring), in that order.

    records: the pool; only annotated ones are used (gold records are drawn without
    replacement while the pool lasts, then again). rng: all random choices.
    config: num_gold (gold examples), num_corrupted (corrupted examples),
    error_mix ({error kind: weight}: the kinds of the corrupted examples, in exactly these
    proportions up to rounding),
    match_error_propagation (probability a wrong_match error carries into the judgment).
    rollouts: (parsed [B][G], records [B]) policy samples, labelled by the verifier.
    """
    check_examples_config(config)
    annotated = [r for r in records if r.get("annotations")]
    if not annotated and (config["num_gold"] or config["num_corrupted"]):
        raise ValueError("records: none has annotations; gold and corrupted examples need them")
    examples: list[StepExample] = []

    def draws(n: int) -> list[Mapping]:
        if n == 0:
            return []
        order = [i for _ in range(-(-n // len(annotated))) for i in rng.permutation(len(annotated))]
        return [annotated[i] for i in order[:n]]

    examples += [_gold_example(r) for r in draws(int(config["num_gold"]))]
    if config["num_corrupted"]:
        pools = _fact_pools(annotated)
        for kind in rng.permutation(_error_kind_plan(config)):
            for _ in range(_MAX_TRIES):
                record = annotated[int(rng.integers(len(annotated)))]
                example = _corrupted_example(record, ERROR_KINDS[kind], pools,
                                             float(config["match_error_propagation"]), rng)
                if example is not None:
                    examples.append(example)
                    break
            else:
                raise ValueError(f"records: no record takes a {ERROR_KINDS[kind]!r} error in "
                                 f"{_MAX_TRIES} tries; drop it from error_mix")
    if rollouts is not None:
        examples += rollout_examples(*rollouts)
    return examples


def save_examples(path: str, examples: Sequence[StepExample]) -> None:
    """Writes examples as JSON lines (atomically)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for example in examples:
            f.write(json.dumps(dataclasses.asdict(example)) + "\n")
    os.replace(tmp, path)


def load_examples(path: str) -> list[StepExample]:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [StepExample(**{**row, "correct": tuple(row["correct"]),
                           "known": tuple(row["known"])}) for row in rows]
