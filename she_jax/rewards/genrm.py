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

Training examples: `she_jax.rewards.genrm_examples` (re-exported here).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from she_jax import run_dir as run_dir_lib
from she_jax import sampling, special_tokens as st
from she_jax.data import cot
from she_jax.models import transformer
from she_jax.data.cot import ParsedCoT
# Re-exported: the training examples live in genrm_examples; callers reach them as genrm.NAME.
from she_jax.rewards.genrm_examples import (  # noqa: F401
    ERROR_KINDS, EXAMPLE_KINDS, GOLD_KIND, NUM_STEPS, ROLLOUT_KIND, StepExample,
    build_genrm_examples, check_examples_config, load_examples, rollout_examples,
    save_examples)

VERDICT_WORDS = ("yes", "no")  # verdict index 0 = step correct, 1 = step incorrect
_JUDGMENT = NUM_STEPS - 1  # the last step; its block carries the label token


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
