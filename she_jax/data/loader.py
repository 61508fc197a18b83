"""grain pipelines from records to fixed-shape numpy batches.

Two kinds of batch, each a `grain.MapDataset` whose element k is the k-th batch:

- `sft_dataset`: prompt + target (the CoT in a chosen order, or the bare label token) + EOS,
  right-padded, with the loss on the target only. For SFT and teacher-forced scoring. Given
  several orders, every record appears once per order in each epoch (multi-task SFT); the
  training-only order `cot.CHECKS` also changes the prompt's last token.
- `prompt_dataset`: prompts only, left-padded (what prefill and the sampler expect). For RL
  rollouts and evaluation.

Every record is tokenized once up front to learn its length; each sequence goes into the
smallest bucket length that holds it, and a batch holds sequences of one bucket only, so a
jitted step sees at most len(buckets) shapes. The batch plan of epoch e (which records, in
which order) is a pure function of (seed, e): element k of the dataset is batch k % n of
epoch k // n (n batches per epoch), so the position to checkpoint is one integer — the
step — either through grain's iterator state (`it.get_state()` / `it.set_state(state)`,
{'next_index': k}) or by indexing the dataset (`batches[k]`).

`fit_records` makes records fit a length limit before any dataset is built (error, skip,
or cut the item title), measured by `record_lengths` exactly as the datasets measure them;
she_jax.data.checks runs it on every split a run uses before the first step.

Batch keys (B = batch_size, T = the bucket length of that batch):
  tokens [B, T] int32, attention_mask [B, T] bool (True on real tokens),
  labels [B] int32 (class id: index in special_tokens.LABELS; -1 on filler rows),
  prompt_len [B] int32 (prompt tokens, BOS included),
  example_mask [B] bool (False on filler rows of a partial batch),
  index [B] int32 (position of the record in the input sequence; -1 on filler rows; with k
    orders, copy j of record i is row j * N + i of the N records repeated k times),
  sft only: loss_mask [B, T] bool — True where tokens[b, t] is a target token (CoT or label
    and the final EOS), so the next-token loss of logits[:, t-1] is weighted by
    loss_mask[:, t].
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Mapping, Protocol, Sequence

import grain
import numpy as np

from she_jax import special_tokens as st
from she_jax.data import cot

DEFAULT_SFT_BUCKETS = (128, 256, 512)
DEFAULT_PROMPT_BUCKETS = (32, 64, 128)
OVERLONG = ("error", "skip")


class TokenizerLike(Protocol):
    pad_id: int
    eos_id: int
    bos_id: int | None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...


class _Packed:
    """Token sequences in one flat int32 array (memory stays small for millions of rows)."""

    def __init__(self, seqs: Sequence[Sequence[int]]):
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32,
                                count=int(self.offsets[-1]))

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _encode_all(texts: list[str], tokenizer: TokenizerLike, chunk: int = 4096) -> _Packed:
    """The token ids of `texts`."""
    seqs: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        seqs.extend(tokenizer.encode_batch(texts[start:start + chunk]))
    return _Packed(seqs)


def _label_id(record: Mapping, i: int) -> int:
    label = record.get("label")
    if label not in st.LABELS:
        raise ValueError(f"record {i} (id {record.get('id')!r}): label {label!r} is not one of "
                         f"{st.LABELS}")
    return st.LABELS.index(label)


class _BatchPlan:
    """Which records make up each batch of each epoch, grouped by bucket.

    lengths: [N] token count of each kept record; kept: [N] their record indices.
    """

    def __init__(self, lengths: np.ndarray, kept: np.ndarray, buckets: Sequence[int],
                 batch_size: int, seed: int, shuffle: bool, drop_remainder: bool):
        self.buckets = tuple(buckets)
        self.bucket_of = np.searchsorted(np.asarray(self.buckets), lengths)  # smallest that fits
        self.kept, self.batch_size = kept, batch_size
        self.seed, self.shuffle, self.drop_remainder = seed, shuffle, drop_remainder
        sizes = np.bincount(self.bucket_of, minlength=len(self.buckets))
        per_bucket = sizes // batch_size if drop_remainder else -(-sizes // batch_size)
        # Constant across epochs: only the membership of batches changes with the shuffle.
        self.batches_per_epoch = int(per_bucket.sum())

    @functools.lru_cache(maxsize=2)
    def epoch(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """[(bucket index, record indices of the batch (<= batch_size))] for one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.kept)) if self.shuffle else np.arange(len(self.kept))
        batches = []
        for b in range(len(self.buckets)):
            members = self.kept[order[self.bucket_of[order] == b]]
            stop = (len(members) // self.batch_size * self.batch_size if self.drop_remainder
                    else len(members))
            batches.extend((b, members[s:s + self.batch_size])
                           for s in range(0, stop, self.batch_size))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches


class _BatchSource:
    """Random-access batches: item k is batch k % n of epoch k // n."""

    def __init__(self, plan: _BatchPlan, num_epochs: int | None, make_batch):
        self.plan, self.num_epochs, self.make_batch = plan, num_epochs, make_batch

    def __len__(self) -> int:
        if self.num_epochs is None:
            return sys.maxsize if self.plan.batches_per_epoch else 0
        return self.plan.batches_per_epoch * self.num_epochs

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range [0, {len(self)})")
        epoch, j = divmod(k, self.plan.batches_per_epoch)
        bucket, members = self.plan.epoch(epoch)[j]
        return self.make_batch(self.plan.buckets[bucket], members)


def _check_args(batch_size: int, buckets: Sequence[int], overlong: str,
                num_epochs: int | None) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
        raise ValueError(f"buckets must be increasing positive lengths, got {tuple(buckets)}")
    if overlong not in OVERLONG:
        raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}")


class BatchDataset:
    """A grain.MapDataset of batches plus what it was built from.

    dataset: element k is batch k (see module docstring); num_skipped: overlong records left
    out (overlong='skip'); batches_per_epoch.
    """

    def __init__(self, dataset: grain.MapDataset, num_skipped: int, batches_per_epoch: int):
        self.dataset, self.num_skipped = dataset, num_skipped
        self.batches_per_epoch = batches_per_epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        return self.dataset[k]

    def iterator(self, state: Mapping[str, Any] | None = None) -> grain.DatasetIterator:
        """A checkpointable iterator (get_state()/set_state()), resumed from `state` if given."""
        it = iter(self.dataset.to_iter_dataset())
        if state is not None:
            it.set_state(dict(state))
        return it


class _Encoded:
    """Everything batches are made of, tokenized once: prompts [+ targets], labels, lengths."""

    def __init__(self, records: Sequence[Mapping], tokenizer: TokenizerLike, add_bos: bool,
                 order: str | Sequence[str] | None):
        if add_bos and tokenizer.bos_id is None:
            raise ValueError("add_bos=True but the tokenizer has no BOS token")
        self.pad_id, self.eos_id = tokenizer.pad_id, tokenizer.eos_id
        self.bos = [tokenizer.bos_id] if add_bos else []
        records = list(records)  # one pass over a lazy source (e.g. a tfds data source)
        orders = (order,) if order is None or isinstance(order, str) else tuple(order)
        if not orders or len(set(orders)) != len(orders):
            raise ValueError(f"orders must be distinct and at least one, got {orders}")
        targets = [] if order is None else [cot.render_target(r, o) for o in orders
                                             for r in records]
        # One prompt per (order, record): CHECKS ends its prompts differently.
        self.prompts = _encode_all([cot.render_training_prompt(r, o) for o in orders
                                    for r in records], tokenizer)
        records = records * len(orders)
        self.targets = None if order is None else _encode_all(targets, tokenizer)
        self.labels = np.array([_label_id(r, i) for i, r in enumerate(records)], dtype=np.int32)
        self.prompt_lens = self.prompts.lengths + len(self.bos)
        self.ids = [r.get("id") for r in records]

    def row_fields(self, members: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        pad = batch_size - len(members)
        return {
            "labels": np.concatenate([self.labels[members], np.full(pad, -1)]).astype(np.int32),
            "prompt_len": np.concatenate([self.prompt_lens[members],
                                          np.zeros(pad)]).astype(np.int32),
            "example_mask": np.arange(batch_size) < len(members),
            "index": np.concatenate([members, np.full(pad, -1)]).astype(np.int32),
        }


class _SftBatch:
    """(bucket length, record indices) -> a right-padded teacher-forcing batch."""

    def __init__(self, encoded: _Encoded, batch_size: int):
        self.encoded, self.batch_size = encoded, batch_size

    def __call__(self, length: int, members: np.ndarray) -> dict[str, np.ndarray]:
        enc, shape = self.encoded, (self.batch_size, length)
        tokens = np.full(shape, enc.pad_id, dtype=np.int32)
        loss_mask = np.zeros(shape, dtype=bool)
        attention_mask = np.zeros(shape, dtype=bool)
        for row, i in enumerate(members):
            seq = np.concatenate([enc.bos, enc.prompts[i], enc.targets[i], [enc.eos_id]])
            tokens[row, :len(seq)] = seq
            attention_mask[row, :len(seq)] = True
            loss_mask[row, enc.prompt_lens[i]:len(seq)] = True
        return dict(tokens=tokens, loss_mask=loss_mask, attention_mask=attention_mask,
                    **enc.row_fields(members, self.batch_size))


class _PromptBatch:
    """(bucket length, record indices) -> a left-padded prompt batch.

    Filler rows (example_mask False) repeat the batch's first prompt, so that every row is a
    valid model input (a sampler refuses an empty prompt); their outputs are to be ignored.
    """

    def __init__(self, encoded: _Encoded, batch_size: int):
        self.encoded, self.batch_size = encoded, batch_size

    def __call__(self, length: int, members: np.ndarray) -> dict[str, np.ndarray]:
        enc, shape = self.encoded, (self.batch_size, length)
        tokens = np.full(shape, enc.pad_id, dtype=np.int32)
        attention_mask = np.zeros(shape, dtype=bool)
        rows = np.concatenate([members, np.full(self.batch_size - len(members), members[0])])
        for row, i in enumerate(rows):
            seq = np.concatenate([enc.bos, enc.prompts[i]])
            tokens[row, length - len(seq):] = seq
            attention_mask[row, length - len(seq):] = True
        return dict(tokens=tokens, attention_mask=attention_mask,
                    **enc.row_fields(members, self.batch_size))


def _batch_dataset(encoded: _Encoded, lengths: np.ndarray, make_batch, *, batch_size: int,
                   buckets: Sequence[int], seed: int, shuffle: bool, num_epochs: int | None,
                   drop_remainder: bool, overlong: str, what: str) -> BatchDataset:
    over = np.flatnonzero(lengths > buckets[-1])
    if len(over) and overlong == "error":
        i = int(over[0])
        raise ValueError(
            f"{len(over)} {what} longer than the largest bucket ({buckets[-1]}); first: record {i} "
            f"(id {encoded.ids[i]!r}) has {lengths[i]} tokens. Add a bigger bucket or pass "
            "overlong='skip'")
    kept = np.flatnonzero(lengths <= buckets[-1])
    plan = _BatchPlan(lengths[kept], kept, buckets, batch_size, seed, shuffle, drop_remainder)
    source = _BatchSource(plan, num_epochs, make_batch)
    return BatchDataset(grain.MapDataset.source(source), len(lengths) - len(kept),
                        plan.batches_per_epoch)


def sft_dataset(records: Sequence[Mapping], tokenizer: TokenizerLike, *, batch_size: int,
                buckets: Sequence[int] = DEFAULT_SFT_BUCKETS,
                order: str | Sequence[str] = "think_first",
                seed: int = 0, shuffle: bool = True, num_epochs: int | None = 1,
                drop_remainder: bool = True, add_bos: bool = False,
                overlong: str = "error") -> BatchDataset:
    """Teacher-forcing batches: [BOS] prompt target EOS, right-padded to the bucket length.

    target = cot.render_target(record, order). Several orders (a sequence) put every record in
    each epoch once per order. drop_remainder=False keeps each bucket's last partial batch,
    filled with rows whose example_mask is False (use it for evaluation).
    """
    _check_args(batch_size, buckets, overlong, num_epochs)
    encoded = _Encoded(records, tokenizer, add_bos, order)
    lengths = encoded.prompt_lens + encoded.targets.lengths + 1  # + EOS
    return _batch_dataset(encoded, lengths, _SftBatch(encoded, batch_size), batch_size=batch_size,
                          buckets=buckets, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                          drop_remainder=drop_remainder, overlong=overlong, what="sequences")


def prompt_dataset(records: Sequence[Mapping], tokenizer: TokenizerLike, *, batch_size: int,
                   buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS, seed: int = 0,
                   shuffle: bool = False, num_epochs: int | None = 1,
                   drop_remainder: bool = False, add_bos: bool = False,
                   overlong: str = "error") -> BatchDataset:
    """Prompt-only batches, left-padded to the bucket length (the prompt ends at T - 1).

    Defaults suit evaluation (every record once, in bucket order); RL passes shuffle=True,
    num_epochs=None. `index` maps each row back to its record (annotations, label, type).
    """
    _check_args(batch_size, buckets, overlong, num_epochs)
    encoded = _Encoded(records, tokenizer, add_bos, order=None)
    return _batch_dataset(encoded, encoded.prompt_lens, _PromptBatch(encoded, batch_size),
                          batch_size=batch_size, buckets=buckets, seed=seed, shuffle=shuffle,
                          num_epochs=num_epochs, drop_remainder=drop_remainder,
                          overlong=overlong, what="prompts")


# ------------------------------------------------------------------ fitting records to a length

FIT_OVERLONG = ("error", "skip", "truncate")


def record_lengths(records: Sequence[Mapping], tokenizer: TokenizerLike, *,
                   order: str | Sequence[str] | None = None, add_bos: bool = False
                   ) -> np.ndarray:
    """[N] tokens of each record exactly as the datasets above measure it: the prompt
    (order None, `prompt_dataset`), or the SFT sequence [BOS] prompt target EOS — the
    longest over the orders when several are given (`sft_dataset`)."""
    records = list(records)
    if not records:
        return np.zeros(0, np.int64)
    encoded = _Encoded(records, tokenizer, add_bos, order)
    lengths = encoded.prompt_lens.astype(np.int64)
    if encoded.targets is not None:
        lengths = lengths + encoded.targets.lengths + 1  # + EOS
    return lengths.reshape(-1, len(records)).max(axis=0)


class OverlongError(ValueError):
    """A record longer than the limit (overlong='error', or 'truncate' that cannot fit it)."""


@dataclasses.dataclass
class FitResult:
    """records: those kept, in order (a truncated one replaced by its copy with the cut
    title); skipped / truncated: their ids, in input order."""
    records: list[Mapping]
    skipped: list[str]
    truncated: list[str]


def _largest_fitting(cuts: Sequence[int], fits) -> int | None:
    """The largest cut in the increasing `cuts` for which fits(cut) holds, by bisection
    (longer titles never tokenize shorter, to within a token: the result is re-checked)."""
    if not cuts or not fits(cuts[0]):
        return None
    lo, hi = 0, len(cuts) - 1  # invariant: fits(cuts[lo])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(cuts[mid]):
            lo = mid
        else:
            hi = mid - 1
    return cuts[lo]


def truncate_title(record: Mapping, tokenizer: TokenizerLike, max_len: int, *,
                   order: str | Sequence[str] | None = None, add_bos: bool = False
                   ) -> dict | None:
    """A copy of `record` whose item_title is the longest prefix that makes it fit in
    `max_len` tokens (measured as `record_lengths` does), or None if no non-empty one does.

    Only the title is cut: the query is what is being judged and the special markers are
    added around both by the prompt template, so they stay whole. The cut falls at a word
    boundary where one fits, else inside the first word (titles in scripts written
    without spaces)."""
    title = record["item_title"]

    def with_title(cut: int) -> dict:
        return {**record, "item_title": title[:cut].rstrip()}

    def fits(cut: int) -> bool:
        candidate = with_title(cut)
        return bool(candidate["item_title"]) and record_lengths(
            [candidate], tokenizer, order=order, add_bos=add_bos)[0] <= max_len

    word_ends = [i for i in range(1, len(title))
                 if title[i].isspace() and not title[i - 1].isspace()]
    for cuts in (word_ends, range(1, len(title))):
        cut = _largest_fitting(cuts, fits)
        if cut is not None and fits(cut):
            return with_title(cut)
    return None


def fit_records(records: Sequence[Mapping], tokenizer: TokenizerLike, *, max_len: int,
                overlong: str, order: str | Sequence[str] | None = None,
                add_bos: bool = False, what: str = "records", fixes: str = "") -> FitResult:
    """Makes every record fit in `max_len` tokens (measured as `record_lengths` does).

    overlong: 'error' raises OverlongError naming `what`, the count, and the first record
    (position, id, length, limit) followed by `fixes` (how to raise the limit); 'skip'
    leaves overlong records out; 'truncate' cuts their item title (`truncate_title`) and
    raises OverlongError for one that no title cut can fit.
    """
    if overlong not in FIT_OVERLONG:
        raise ValueError(f"overlong must be one of {FIT_OVERLONG}, got {overlong!r}")
    records = list(records)
    lengths = record_lengths(records, tokenizer, order=order, add_bos=add_bos)
    over = np.flatnonzero(lengths > max_len)
    if not len(over):
        return FitResult(records, [], [])

    def describe(i: int) -> str:
        return (f"record {i} (id {records[i].get('id')!r}) has {lengths[i]} tokens, more "
                f"than the {max_len} allowed")

    if overlong == "error":
        raise OverlongError(f"{what}: {len(over)} record(s) too long; first: {describe(over[0])}."
                            f" {fixes}".rstrip())
    kept, skipped, truncated = list(records), [], []
    for i in over:
        if overlong == "skip":
            kept[i] = None
            skipped.append(records[i].get("id"))
            continue
        cut = truncate_title(records[i], tokenizer, max_len, order=order, add_bos=add_bos)
        if cut is None:
            raise OverlongError(f"{what}: {describe(i)}, and cutting its item title cannot "
                                f"make it fit (the rest alone is too long). {fixes}".rstrip())
        kept[i] = cut
        truncated.append(records[i].get("id"))
    return FitResult([r for r in kept if r is not None], skipped, truncated)
