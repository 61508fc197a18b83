"""The 5-step chain-of-thought format: render, parse, and segment generated tokens by step.

Text format (both orders use the same step blocks; only the label token moves):

    think-first:   "<|step1|> f; f <|step2|> f <|step3|> f <|step4|> f <|step5|> label: L4 <|L4|>"
    answer-first:  "<|L4|> <|step1|> f; f <|step2|> f <|step3|> f <|step4|> f <|step5|> label: L4"

A fact is a "key: value" string; the facts of a step are joined with "; ". A step with no
facts renders as its bare marker. Answer-first is the TaoSR1 post-CoT serving form: the
label is the first generated token, so serving reads the label distribution after prefill.
The EOS token is not part of the CoT text; the loader appends it.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Mapping, Sequence

import numpy as np

from she_jax import special_tokens as st

ORDERS = ("think_first", "answer_first")
# A training-only auxiliary order (config.sft.extra_orders), never served or sampled: the
# prompt ends in <|step3|> where the served prompt has <|answer|>, and the target is the
# step-3 and step-4 facts alone — "category match: exact <|step4|> color match: no". Both
# served orders state those decisions only after the extraction steps that spell out both
# sides; this order makes the model state each match straight from query and title, the
# computation an answer-first label has to do in its one token.
CHECKS = "checks"
TRAINING_ORDERS = ORDERS + (CHECKS,)
_CHECK_STEPS = ("category_match", "attribute_match")
FACT_SEPARATOR = "; "
LABEL_STEP_ID = 5  # segment id of the label token; steps are 0..4, -1 is "no segment".

_STEP_INDEX = {marker: i for i, marker in enumerate(st.STEP_MARKERS)}
_LABEL_OF_TOKEN = dict(zip(st.LABEL_TOKENS, st.LABELS))
# Any "<|...|>" piece: step markers and label tokens are structure, anything else is garbage.
_CONTROL_RE = re.compile(r"<\|[^<>|]*\|>")
_TRAILING_IGNORED = (st.EOS, st.PAD)
_LABEL_FACT_RE = re.compile(r"^label\s*:\s*(L[1-4])$", re.IGNORECASE)


def _check_order(order: str, allowed: tuple[str, ...] = ORDERS) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {allowed}, got {order!r}")


def _check_fact(fact: str, step_name: str) -> None:
    if not isinstance(fact, str) or not fact.strip():
        raise ValueError(f"step {step_name!r}: a fact must be a non-empty string, got {fact!r}")
    # These would make the rendered text parse back differently.
    if ";" in fact or "\n" in fact or _CONTROL_RE.search(fact):
        raise ValueError(
            f"step {step_name!r}: fact {fact!r} contains ';', a newline or a control token")


def render_steps(annotations: Mapping[str, Sequence[str]] | None) -> str:
    """Renders the five step blocks "<|step1|> f; f <|step2|> ..." (missing steps are empty)."""
    annotations = annotations or {}
    unknown = set(annotations) - set(st.STEP_NAMES)
    if unknown:
        raise ValueError(f"unknown step names {sorted(unknown)}; expected {st.STEP_NAMES}")
    return " ".join(_render_block(name, annotations.get(name)) for name in st.STEP_NAMES)


def _render_block(name: str, facts: Sequence[str] | None) -> str:
    """One step block "<|stepN|> f; f" (the bare marker when there are no facts)."""
    facts = list(facts or ())
    for fact in facts:
        _check_fact(fact, name)
    marker = st.STEP_MARKERS[st.STEP_NAMES.index(name)]
    return f"{marker} {FACT_SEPARATOR.join(f.strip() for f in facts)}".rstrip()


def label_token(label: str) -> str:
    """'L4' -> '<|L4|>'."""
    if label not in st.LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {st.LABELS}")
    return st.LABEL_TOKENS[st.LABELS.index(label)]


def render_cot(annotations: Mapping[str, Sequence[str]] | None, label: str,
               order: str = "think_first") -> str:
    """Renders step annotations and the label as CoT text in the given order."""
    _check_order(order)
    steps, token = render_steps(annotations), label_token(label)
    return f"{steps} {token}" if order == "think_first" else f"{token} {steps}"


def render_prompt(query: str, item_title: str) -> str:
    """The prompt text; the model's output starts after the ANSWER token."""
    return f"{st.QUERY} {query} {st.ITEM} {item_title} {st.ANSWER}"


def render_training_prompt(record: Mapping, order: str | None = None) -> str:
    """The prompt of `record` for training in `order`: `render_prompt` for the served orders
    (and None), the prompt with <|step3|> in place of <|answer|> for CHECKS."""
    prompt = render_prompt(record["query"], record["item_title"])
    if order == CHECKS:
        return prompt.removesuffix(st.ANSWER) + st.STEP_MARKERS[2]
    return prompt


def has_gold_cot(record: Mapping) -> bool:
    """Whether the record carries a gold CoT (step annotations or the stored CoT text)."""
    return bool(record.get("annotations") or record.get("cot"))


def gold_cot_records(records: Sequence[Mapping], key: str) -> list[Mapping]:
    """The records that carry a gold CoT, in order; a ValueError naming `key` when none does.

    A record without one renders as its label token alone (`render_target`), which teaches a
    think-first policy to answer without reasoning: the `rl` split keeps step annotations on
    only `annotation_fraction` of its records."""
    kept = [r for r in records if has_gold_cot(r)]
    if not kept:
        raise ValueError(f"{key}: none of the {len(records)} records carries a gold CoT "
                         "(step annotations or a stored cot)")
    return kept


def _record_steps(record: Mapping) -> Mapping[str, Sequence[str]] | None:
    if record.get("annotations"):
        return record["annotations"]
    if record.get("cot"):
        # Only the gold think-first text is stored; re-render it in the requested order.
        parsed = parse_cot(record["cot"], "think_first")
        if not parsed.format_valid:
            raise ValueError(f"record {record.get('id')!r}: stored cot is not valid: "
                             f"{parsed.errors}")
        return parsed.steps
    return None


def render_target(record: Mapping, order: str = "think_first") -> str:
    """The training target text of a record (no EOS): its CoT in `order`, or just the label
    token when the record has neither annotations nor a CoT (plain-label SFT). For CHECKS
    (prompt from `render_training_prompt`): the step-3 facts, <|step4|>, the step-4 facts."""
    _check_order(order, TRAINING_ORDERS)
    label, steps = record["label"], _record_steps(record)
    if order == CHECKS:
        if steps is None:
            raise ValueError(f"record {record.get('id')!r}: order {CHECKS!r} needs step "
                             "annotations or a stored cot, and the record has neither")
        blocks = " ".join(_render_block(name, steps.get(name)) for name in _CHECK_STEPS)
        return blocks.removeprefix(st.STEP_MARKERS[2]).strip()  # the prompt ends in it
    if steps is not None:
        return render_cot(steps, label, order)
    return label_token(label)


@dataclasses.dataclass(frozen=True)
class ParsedCoT:
    """A parsed CoT. steps: {step_name: [facts]} for the steps present; label: 'L4'.. or None;
    errors: human-readable format errors, empty iff the text is in the exact format."""
    steps: dict[str, list[str]]
    label: str | None
    errors: tuple[str, ...]

    @property
    def format_valid(self) -> bool:
        return not self.errors

    @property
    def label_id(self) -> int | None:
        return None if self.label is None else st.LABELS.index(self.label)


def _split_facts(body: str) -> list[str]:
    return [" ".join(f.split()) for f in body.split(";") if f.strip()]


def parse_cot(text: str, order: str = "think_first") -> ParsedCoT:
    """Parses CoT text tolerantly: never raises on bad text, reports what is wrong in `errors`.

    Whitespace is free; a trailing EOS/PAD is ignored. Duplicate step markers merge their facts
    into the step (and are an error); the label is the label token at the expected end
    (last for think-first, first for answer-first), else the first label token found.
    """
    _check_order(order)
    errors: list[str] = []
    text = text.strip()
    while text.endswith(_TRAILING_IGNORED):
        for piece in _TRAILING_IGNORED:
            text = text.removesuffix(piece).rstrip()

    # Tokens: (kind, value) with kind in {'step', 'label', 'text'}.
    pieces: list[tuple[str, str]] = []
    pos = 0
    for m in _CONTROL_RE.finditer(text):
        if text[pos:m.start()].strip():
            pieces.append(("text", text[pos:m.start()]))
        tok = m.group(0)
        if tok in _STEP_INDEX:
            pieces.append(("step", tok))
        elif tok in _LABEL_OF_TOKEN:
            pieces.append(("label", tok))
        else:
            errors.append(f"unexpected control token {tok}")
        pos = m.end()
    if text[pos:].strip():
        pieces.append(("text", text[pos:]))

    steps: dict[str, list[str]] = {}
    seen_order: list[int] = []
    current: int | None = None
    for kind, value in pieces:
        if kind == "step":
            idx = _STEP_INDEX[value]
            if idx in seen_order:
                errors.append(f"duplicate step marker {value}")
            elif seen_order and idx < max(seen_order):
                errors.append(f"out-of-order step marker {value}")
            seen_order.append(idx)
            current = idx
            steps.setdefault(st.STEP_NAMES[idx], [])
        elif kind == "text":
            if current is None:
                errors.append(f"text outside any step: {value.strip()[:40]!r}")
                continue
            steps[st.STEP_NAMES[current]].extend(_split_facts(value))
        else:
            current = None  # text after a label token belongs to no step.
    for idx, marker in enumerate(st.STEP_MARKERS):
        if idx not in seen_order:
            errors.append(f"missing step marker {marker}")
    for name, facts in steps.items():
        for fact in facts:
            if ":" not in fact:
                errors.append(f"step {name!r}: fact {fact!r} is not 'key: value'")

    label_positions = [i for i, (kind, _) in enumerate(pieces) if kind == "label"]
    label = None
    if not label_positions:
        errors.append("missing label token")
    else:
        if len(label_positions) > 1:
            errors.append(f"{len(label_positions)} label tokens")
        expected = len(pieces) - 1 if order == "think_first" else 0
        at = expected if expected in label_positions else label_positions[0]
        label = _LABEL_OF_TOKEN[pieces[at][1]]
        if at != expected:
            where = "last" if order == "think_first" else "first"
            errors.append(f"label token is not {where} ({order})")
    for fact in steps.get(st.STEP_NAMES[-1], []):
        m = _LABEL_FACT_RE.match(fact)
        if m and label is not None and m.group(1).upper() != label:
            errors.append(f"judgment states label {m.group(1).upper()} "
                          f"but the label token is {label}")
    return ParsedCoT(steps=steps, label=label, errors=tuple(errors))


def step_ids_for_tokens(token_ids: np.ndarray, step_marker_ids: Sequence[int],
                        label_ids: Sequence[int], mask: np.ndarray | None = None) -> np.ndarray:
    """The CoT segment of every token of generated sequences, for step-level rewards.

    token_ids: [..., T] int (e.g. [T] or [B, T]); mask: [..., T] bool, False = padding.
    Returns [..., T] int32: the segment of the latest structural token at or before each
    position — k for <|step{k+1}|> (0..4), 5 for a label token — and -1 before the first
    one and at padding. So a step's marker and its facts share an id; what follows a label
    token (EOS in think-first) carries 5 until the next step marker.
    """
    token_ids = np.asarray(token_ids)
    marker_value = _marker_values(token_ids, step_marker_ids, label_ids, np)
    positions = np.broadcast_to(np.arange(token_ids.shape[-1]), token_ids.shape)
    last_marker = np.maximum.accumulate(np.where(marker_value >= 0, positions, -1), axis=-1)
    ids = np.where(last_marker >= 0,
                   np.take_along_axis(marker_value, np.maximum(last_marker, 0), axis=-1), -1)
    if mask is not None:
        ids = np.where(np.asarray(mask, bool), ids, -1)
    return ids.astype(np.int32)


def step_ids_for_tokens_jax(token_ids, step_marker_ids: Sequence[int], label_ids: Sequence[int],
                            mask=None):
    """jit-able twin of `step_ids_for_tokens` (the ids are static Python ints).

    token_ids: [B, T] int; mask: [B, T] bool or None. Returns [B, T] int32.
    """
    import jax
    import jax.numpy as jnp
    marker_value = _marker_values(token_ids, step_marker_ids, label_ids, jnp)
    positions = jnp.broadcast_to(jnp.arange(token_ids.shape[-1]), token_ids.shape)
    last_marker = jax.lax.cummax(jnp.where(marker_value >= 0, positions, -1),
                                 axis=token_ids.ndim - 1)
    ids = jnp.where(last_marker >= 0,
                    jnp.take_along_axis(marker_value, jnp.maximum(last_marker, 0), axis=-1), -1)
    if mask is not None:
        ids = jnp.where(mask, ids, -1)
    return ids.astype(jnp.int32)


def _marker_values(token_ids, step_marker_ids, label_ids, xp):
    """[..., T]: k at <|step{k+1}|>, 5 at a label token, -1 elsewhere."""
    if len(step_marker_ids) != len(st.STEP_MARKERS) or len(label_ids) != len(st.LABELS):
        raise ValueError(f"need {len(st.STEP_MARKERS)} step marker ids and {len(st.LABELS)} label "
                         f"ids, got {len(step_marker_ids)} and {len(label_ids)}")
    value = xp.full(token_ids.shape, -1, dtype=xp.int32)
    for k, marker_id in enumerate(step_marker_ids):
        value = xp.where(token_ids == marker_id, k, value)
    for label_id in label_ids:
        value = xp.where(token_ids == label_id, LABEL_STEP_ID, value)
    return value


def normalize_fact(fact: str) -> str:
    """Canonical form of a fact for matching: NFKC, lowercase, punctuation as space, single
    spaces, and "key: value" with exactly one ': ' after the key (the first colon)."""
    fact = unicodedata.normalize("NFKC", fact).lower()
    key, sep, value = fact.partition(":")

    def clean(s: str) -> str:
        s = "".join(" " if unicodedata.category(c).startswith("P") else c for c in s)
        return " ".join(s.split())

    return f"{clean(key)}: {clean(value)}" if sep else clean(key)


def missing_facts(stated_facts: Sequence[str], annotated_facts: Sequence[str]) -> list[str]:
    """The annotated facts that no stated fact matches after `normalize_fact`, in order."""
    stated = {normalize_fact(f) for f in stated_facts}
    return [f for f in annotated_facts if normalize_fact(f) not in stated]


def facts_match(stated_facts: Sequence[str], annotated_facts: Sequence[str]) -> bool:
    """True iff every annotated fact is stated (normalized; extra stated facts are allowed)."""
    return not missing_facts(stated_facts, annotated_facts)


def training_orders(sft_config: Mapping) -> str | tuple[str, ...]:
    """config.sft.order, or (order, *extra_orders) when extra orders are set (validated)."""
    extra = tuple(sft_config.extra_orders)
    if sft_config.order not in ORDERS:
        raise ValueError(f"config.sft.order: {sft_config.order!r} is not one of {ORDERS}")
    for name in extra:
        if name not in TRAINING_ORDERS:
            raise ValueError(f"config.sft.extra_orders: {name!r} is not one of "
                             f"{TRAINING_ORDERS}")
    if sft_config.order in extra or len(set(extra)) != len(extra):
        raise ValueError(f"config.sft.extra_orders {extra} must not repeat an order or "
                         f"config.sft.order ({sft_config.order!r})")
    return (sft_config.order, *extra) if extra else sft_config.order
