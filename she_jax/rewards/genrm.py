"""The generative step reward model of SRPO: an LM that writes a verdict token per CoT step.

Formulation. The model is the she_jax decoder (initialised from the SFT run, so it knows
the domain and the tokenizer). Each rollout becomes ONE sequence, its steps always in the
canonical order whatever order the policy wrote them in:

    <|query|> q <|item|> t <|answer|>  <|step1|> f; f <|answer|>  <|step2|> f <|answer|>
    ...  <|step5|> label: L2 <|L2|> <|answer|>

Every step block is followed by an inserted <|answer|> "slot"; at a slot the model's
next-token distribution restricted to the two verdict tokens (VERDICT_WORDS, 'yes' /
'no') gives P(step correct) = softmax(logit_yes, logit_no)[0]. Causal attention means the
verdict of step k sees exactly the query, the item, the steps before k and step k — and no
verdict of an earlier step: the verdict tokens are never written into the sequence (in
training nothing is teacher-forced at a slot), so scoring every step of a rollout is one
forward pass, identical in training and in scoring. A step the rollout lacks gets no block
and no slot (`present` False). The CoT's label token is part of step 5's block (think-first
order, whatever the policy's order), because the offline verifier's judgment step is right
only when the label token is the gold label too (`she_jax.rewards.verifier`).

Loss: cross-entropy over the 2 verdict logits only (see `she_jax.train.genrm`), the very
quantity scoring reads, so P(correct) is what gets calibrated; a full-vocabulary loss would
also spend the update on moving mass from the rest of the vocabulary onto the two words,
which scoring never looks at.

Training examples (`build_genrm_examples`), with per-step labels in the offline verifier's
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
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from she_jax import sampling, special_tokens as st
from she_jax.data import cot
from she_jax.data.cot import ParsedCoT
from she_jax.data.shopworld import annotate, labels as rules
from she_jax.models import transformer
from she_jax.rewards import verifier
from she_jax import run_dir as run_dir_lib

VERDICT_WORDS = ("yes", "no")  # verdict index 0 = step correct, 1 = step incorrect
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


# ------------------------------------------------------------------------------- encoding


def verdict_ids(tokenizer: Any) -> tuple[int, int]:
    """(id of 'yes', id of 'no'); ValueError unless each word is exactly one token."""
    ids = []
    for word in VERDICT_WORDS:
        encoded = tokenizer.encode(word)
        if len(encoded) != 1:
            raise ValueError(f"verdict word {word!r} encodes to {len(encoded)} tokens {encoded} "
                             "with this tokenizer; the step reward model needs each verdict "
                             "word to be a single token")
        ids.append(encoded[0])
    return ids[0], ids[1]


def _step_block(marker: str, facts: Sequence[str], label: str | None) -> str:
    block = f" {marker} {cot.FACT_SEPARATOR.join(f.strip() for f in facts)}".rstrip()
    if label is not None:
        block += f" {cot.label_token(label)}"
    return f"{block} {st.ANSWER}"


def encode_for_scoring(parsed_steps: Sequence[Mapping[str, Sequence[str]]],
                       records: Sequence[Mapping], tokenizer: Any, max_len: int,
                       labels: Sequence[str | None] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The scoring sequences of M CoTs (module docstring), right-padded.

    parsed_steps: [M] {step_name: [facts]} (steps in any order; rendered canonically);
    records: [M] with 'query' and 'item_title'; labels: [M] the CoTs' label tokens (None:
    none), written at the end of step 5's block; max_len: longer rows are cut there and
    lose the slots beyond it (those steps count as absent).
    Returns tokens [M, T] int32, mask [M, T] bool, slot_positions [M, 5] int32 (the
    position of the <|answer|> after each step, -1 where the step is absent), present
    [M, 5] bool; T = the longest row (<= max_len).
    """
    if len(parsed_steps) != len(records):
        raise ValueError(f"parsed_steps has {len(parsed_steps)} entries but records has "
                         f"{len(records)}")
    if labels is not None and len(labels) != len(records):
        raise ValueError(f"labels has {len(labels)} entries but records has {len(records)}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    texts, blocks_per_row = [], []
    for i, (steps, record) in enumerate(zip(parsed_steps, records)):
        unknown = set(steps) - set(st.STEP_NAMES)
        if unknown:
            raise ValueError(f"parsed_steps[{i}] has unknown step names {sorted(unknown)}")
        present = [s for s, name in enumerate(st.STEP_NAMES) if name in steps]
        label = labels[i] if labels is not None else None
        texts.append(cot.render_prompt(record["query"], record["item_title"]))
        texts += [_step_block(st.STEP_MARKERS[s], steps[st.STEP_NAMES[s]],
                              label if s == _JUDGMENT else None) for s in present]
        blocks_per_row.append(present)
    # Control tokens split the text before the subword model sees it, so the blocks encode
    # separately to exactly the tokens of the whole text, and each block's end is its slot.
    encoded = iter(tokenizer.encode_batch(texts))
    rows, slot_positions = [], np.full((len(records), NUM_STEPS), -1, np.int32)
    for i, present in enumerate(blocks_per_row):
        row = list(next(encoded))
        for s in present:
            row += next(encoded)
            if len(row) <= max_len:
                slot_positions[i, s] = len(row) - 1
        rows.append(row[:max_len])
    tokens, mask = tokenizer.pad(rows, side="right")
    return tokens, mask, slot_positions, slot_positions >= 0


def verdict_log_probs(model_config: transformer.ModelConfig, params: Any, tokens: jax.Array,
                      mask: jax.Array, slot_positions: jax.Array,
                      verdict_token_ids: tuple[int, int]) -> jax.Array:
    """log softmax over the two verdict logits at each slot: [M, 5, 2] float32 (index 0:
    'yes' = correct). tokens / mask [M, T]; slot_positions [M, 5] (-1 rows give garbage)."""
    hidden = transformer.hidden_states(model_config, params, tokens, mask)  # [M, T, E]
    at = jnp.take_along_axis(hidden, jnp.maximum(slot_positions, 0)[..., None], axis=1)
    logits = transformer.logits_from_hidden(model_config, params, at)  # [M, 5, V]
    return jax.nn.log_softmax(logits[..., jnp.asarray(verdict_token_ids)], axis=-1)


# -------------------------------------------------------------------------------- scoring


def _replicate(params: Any, devices: Sequence[jax.Device]) -> Any:
    """Each leaf [..] -> [D, ..], one copy per device, placed once."""
    sharding = NamedSharding(Mesh(np.array(devices), ("device",)), PartitionSpec("device"))

    def put(leaf):
        leaf = np.asarray(leaf)
        return jax.make_array_from_single_device_arrays(
            (len(devices),) + leaf.shape, sharding,
            [jax.device_put(leaf[None], device) for device in devices])

    return jax.tree.map(put, jax.device_get(params))


class StepRewardModel:
    """P(step correct) for every step of a batch of rollouts, in one pmapped call.

    The params are replicated on `devices` (default: every local device) once, here; a
    batch of M rollouts is padded to a multiple of the device count (rows per device
    rounded up to a bucket) and to a bucketed length, then split [D, M/D, T] over devices.
    """

    def __init__(self, model_config: transformer.ModelConfig, params: Any, tokenizer: Any,
                 devices: Sequence[jax.Device] | None = None, max_len: int = 256,
                 length_bucket: int = 64):
        self.model_config, self.tokenizer = model_config, tokenizer
        self.devices = list(devices if devices is not None else jax.local_devices())
        if not self.devices:
            raise ValueError("devices: need at least one device")
        self.max_len, self.length_bucket = max_len, length_bucket
        self.verdict_ids = verdict_ids(tokenizer)
        tokenizer.check_model_vocab(model_config.vocab_size)
        self.params = _replicate(params, self.devices)
        self._probs = _pmapped_correct_probs(model_config, self.verdict_ids, tuple(self.devices))

    @classmethod
    def load(cls, run_dir: str, devices: Sequence[jax.Device] | None = None,
             dtype: str | None = None, **kwargs: Any) -> StepRewardModel:
        """The model a finished genrm run exported (<run_dir>/model and tokenizer/), run in
        compute dtype `dtype` ('float32' | 'bfloat16'; None: float32)."""
        model_config, params = run_dir_lib.load_model(run_dir, dtype)
        tokenizer = run_dir_lib.load_tokenizer(run_dir)
        return cls(model_config, params, tokenizer, devices, **kwargs)

    def score_steps(self, steps: Sequence[Mapping[str, Sequence[str]]],
                    records: Sequence[Mapping], labels: Sequence[str | None] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """probs [M, 5] float32 P(correct) (0 where absent), present [M, 5] bool for M CoTs
        (arguments as `encode_for_scoring`)."""
        tokens, mask, slots, present = encode_for_scoring(steps, records, self.tokenizer,
                                                          self.max_len, labels)
        num_devices, rows = len(self.devices), len(steps)
        per_device = sampling.bucket_length(max(1, -(-rows // num_devices)), 64)
        length = min(sampling.bucket_length(tokens.shape[1], self.length_bucket),
                     max(self.max_len, tokens.shape[1]))
        padded = num_devices * per_device
        tokens = np.pad(tokens, ((0, padded - rows), (0, length - tokens.shape[1])),
                        constant_values=self.tokenizer.pad_id)
        mask = np.pad(mask, ((0, padded - rows), (0, length - mask.shape[1])))
        slots = np.pad(slots, ((0, padded - rows), (0, 0)), constant_values=-1)
        split = lambda x: x.reshape((num_devices, per_device) + x.shape[1:])
        probs = self._probs(self.params, split(tokens), split(mask), split(slots))
        probs = np.asarray(probs).reshape(padded, NUM_STEPS)[:rows]
        if not np.isfinite(probs[present]).all():
            raise FloatingPointError("step reward model produced non-finite verdict "
                                     "probabilities: its params contain NaN/inf")
        return np.where(present, probs, 0.0).astype(np.float32), present

    def score(self, parsed: Sequence[Sequence[ParsedCoT]], records: Sequence[Mapping]
              ) -> tuple[np.ndarray, np.ndarray]:
        """probs [B, G, 5] float32 P(step correct) (0 where absent), present [B, G, 5] bool.

        parsed: [B][G] rollouts (each read in the canonical step order, its label token
        at the end of step 5); records: [B] with 'query' and 'item_title'.
        """
        if len(parsed) != len(records):
            raise ValueError(f"parsed has {len(parsed)} rows but records has {len(records)}")
        group = {len(row) for row in parsed}
        if len(group) > 1:
            raise ValueError(f"parsed rows have different group sizes {sorted(group)}")
        g = group.pop() if group else 0
        flat = [p for row in parsed for p in row]
        flat_records = [r for r in records for _ in range(g)]
        probs, present = self.score_steps([p.steps for p in flat], flat_records,
                                          [p.label for p in flat])
        shape = (len(records), g, NUM_STEPS)
        return probs.reshape(shape), present.reshape(shape)


def _correct_probs(model_config, verdict_token_ids, params, tokens, mask, slots):
    return jnp.exp(verdict_log_probs(model_config, params, tokens, mask, slots,
                                     verdict_token_ids)[..., 0])


@functools.lru_cache(maxsize=8)
def _pmapped_correct_probs(model_config: transformer.ModelConfig, verdict_token_ids: tuple,
                           devices: tuple) -> Any:
    """One pmapped scorer per (architecture, verdict ids, devices), shared by instances, so
    a reloaded or retrained model of the same shape reuses the compiled program."""
    return jax.pmap(functools.partial(_correct_probs, model_config, verdict_token_ids),
                    devices=devices)


# ----------------------------------------------------------------------------- evaluation


def roc_auc(labels: Any, scores: Any) -> float | None:
    """Exact ROC AUC of `scores` [N] for binary `labels` [N] (True = positive): the
    Mann-Whitney U of the positives' scores against the negatives' over n+ * n-
    (`scipy.stats.mannwhitneyu`, tied scores counting one half). None when either class is
    empty."""
    labels = np.asarray(labels, bool).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    u = scipy.stats.mannwhitneyu(scores[labels], scores[~labels], method="asymptotic").statistic
    return float(u / (positives * negatives))


def _summary(correct: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    return {"n": int(correct.size),
            "n_incorrect": int((~correct).sum()),
            "accuracy": float(((probs >= 0.5) == correct).mean()) if correct.size else None,
            "auc": roc_auc(correct, probs)}


def evaluate_genrm(model: StepRewardModel, examples: Sequence[StepExample],
                   batch_size: int = 256) -> dict[str, Any]:
    """Held-out step verdict quality over the examples' labelled, scored steps.

    A step counts where it is known (labelled) and present in the scored sequence; the
    prediction is P(correct) >= 0.5. Returns {'n_examples', 'n' (steps), 'n_incorrect',
    'accuracy', 'auc' (ROC AUC of P(correct) for correct vs incorrect; None with one class
    only), 'by_step': {step name: same keys}, 'by_kind': {example kind: same keys}}.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    probs, scored = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        p, present = model.score_steps(
            [e.steps for e in chunk], [{"query": e.query, "item_title": e.item_title}
                                       for e in chunk], [e.label for e in chunk])
        probs.append(p)
        scored.append(present & np.array([e.known for e in chunk], bool))
    probs = np.concatenate(probs) if probs else np.zeros((0, NUM_STEPS), np.float32)
    scored = np.concatenate(scored) if scored else np.zeros((0, NUM_STEPS), bool)
    correct = np.array([e.correct for e in examples], bool).reshape(-1, NUM_STEPS)
    kinds = np.array([e.kind for e in examples])
    out = {"n_examples": len(examples), **_summary(correct[scored], probs[scored])}
    out["by_step"] = {name: _summary(correct[scored[:, s], s], probs[scored[:, s], s])
                      for s, name in enumerate(st.STEP_NAMES)}
    out["by_kind"] = {kind: _summary(correct[kinds == kind][scored[kinds == kind]],
                                     probs[kinds == kind][scored[kinds == kind]])
                      for kind in EXAMPLE_KINDS if (kinds == kind).any()}
    return out


def format_genrm_eval(eval_dict: Mapping[str, Any]) -> str:
    """A fixed-width table of `evaluate_genrm` output (overall, per step, per kind)."""
    def cell(value):
        return "-" if value is None else f"{value:.3f}"

    lines = [f"{'':24s} {'n':>6s} {'wrong':>6s} {'acc':>6s} {'auc':>6s}"]
    rows = [("all", eval_dict)] + list(eval_dict["by_step"].items()) + [
        (f"kind:{k}", v) for k, v in eval_dict["by_kind"].items()]
    for name, entry in rows:
        lines.append(f"{name:24s} {entry['n']:6d} {entry['n_incorrect']:6d} "
                     f"{cell(entry['accuracy']):>6s} {cell(entry['auc']):>6s}")
    return "\n".join(lines)
