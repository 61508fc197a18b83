"""Every split a run uses, checked against the lengths it will be batched to, before step 1.

A record too long for its use used to surface where it was first batched: a dev row at the
evaluation after training had finished. `check_lengths` runs at start (after the
tokenizer and the model exist, before any step) over each (split, use) of the run:

  sft trainer        sft.train_split: [BOS] prompt target EOS in every training order
                     <= min(largest of sft.buckets, model max_seq_len)
  dpo                dpo.train_split prompts <= max_seq_len - dpo.max_new_tokens
  grpo, srpo, agrl   rl.train_split prompts <= max_seq_len - rl.max_new_tokens
  genrm (rollouts)   genrm.train_split / heldout_split prompts
                     <= min(largest default prompt bucket, max_seq_len - rollout_max_new_tokens)
  evaluation         every eval.splits split present: prompts
                     <= min(largest of eval.prompt_buckets, max_seq_len - eval.max_new_tokens)

config.data.overlong decides what happens to a record over its limit: 'error' (default)
names the split, the record, its length, the limit and the config keys that fix it;
'skip' leaves it out of the split (counted and logged); 'truncate' cuts its item title to
fit (`loader.truncate_title`; the query and the prompt markers are never cut). The splits
returned are the ones every later stage of the run uses.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from she_jax.data import cot, loader

RL_TRAINERS = ("grpo", "srpo", "agrl")
EVALUATING_TRAINERS = ("sft", "dpo", *RL_TRAINERS)
OVERLONG_KEY = "config.data.overlong"
_IDS_LOGGED = 5


@dataclasses.dataclass(frozen=True)
class LengthLimit:
    """split: the split name; use: what it is batched for (in words); order: None for
    prompts, else the SFT order(s) of the full sequence; max_len: tokens allowed;
    fixes: the config keys that raise max_len."""
    split: str
    use: str
    order: str | tuple[str, ...] | None
    max_len: int
    fixes: str


def _prompt_limit(split: str, use: str, max_seq_len: int, new_tokens_key: str,
                  max_new_tokens: int, buckets_key: str | None,
                  buckets: Sequence[int] | None) -> LengthLimit:
    """Prompts that are padded to `buckets` and then decode `max_new_tokens` in the model."""
    by_model = max_seq_len - int(max_new_tokens)
    model_fix = (f"lower {new_tokens_key} (now {max_new_tokens}) or use a model with a longer "
                 f"max_seq_len (now {max_seq_len})")
    if buckets and max(buckets) < by_model:
        bucket_fix = (f"add a bigger bucket to {buckets_key} (largest now {max(buckets)})"
                      if buckets_key else f"the prompt buckets end at {max(buckets)}")
        return LengthLimit(split, use, None, int(max(buckets)), bucket_fix)
    return LengthLimit(split, use, None, by_model, model_fix)


def length_limits(config: ml_collections.ConfigDict, max_seq_len: int, *,
                  training: bool = True) -> list[LengthLimit]:
    """The (split, use, limit) checks of a run (see the module docstring); training=False
    keeps only the evaluation's (a standalone re-evaluation)."""
    trainer = config.get("trainer", "")
    limits = []
    if training and trainer == "sft":
        orders = cot.training_orders(config.sft)
        largest = int(max(config.sft.buckets))
        if largest <= max_seq_len:
            limits.append(LengthLimit(
                config.sft.train_split, "SFT training sequences", orders, largest,
                f"add a bigger bucket to config.sft.buckets (largest now {largest})"))
        else:
            limits.append(LengthLimit(
                config.sft.train_split, "SFT training sequences", orders, max_seq_len,
                f"use a model with a longer max_seq_len (now {max_seq_len})"))
    if training and trainer == "dpo":
        limits.append(_prompt_limit(config.dpo.train_split, "DPO sampling prompts", max_seq_len,
                                    "config.dpo.max_new_tokens", config.dpo.max_new_tokens,
                                    None, None))
    if training and trainer in RL_TRAINERS:
        limits.append(_prompt_limit(config.rl.train_split, "RL rollout prompts", max_seq_len,
                                    "config.rl.max_new_tokens", config.rl.max_new_tokens,
                                    None, None))
    if training and trainer == "genrm" and config.genrm.rollout_prompts > 0:
        for split in dict.fromkeys((config.genrm.train_split, config.genrm.heldout_split)):
            limits.append(_prompt_limit(
                split, "generative reward model rollout prompts", max_seq_len,
                "config.genrm.rollout_max_new_tokens", config.genrm.rollout_max_new_tokens,
                None, loader.DEFAULT_PROMPT_BUCKETS))
    if trainer in EVALUATING_TRAINERS or not training:
        eval_config = config.eval
        buckets = tuple(eval_config.get("prompt_buckets", loader.DEFAULT_PROMPT_BUCKETS))
        for split in dict.fromkeys(eval_config.splits):
            limits.append(_prompt_limit(split, "evaluation prompts", max_seq_len,
                                        "config.eval.max_new_tokens",
                                        eval_config.max_new_tokens, "config.eval.prompt_buckets",
                                        buckets))
    return limits


def _source_of(config: ml_collections.ConfigDict, split: str) -> str:
    """Where a split's records come from, to name in an error."""
    data = config.data
    if data.source == "jsonl":
        path = dict(data.get("files") or {}).get(split)
        return f" (config.data.files.{split} = {path})" if path else ""
    if data.source == "esci":
        return f" (config.data.esci_dir = {data.esci_dir})"
    return f" ({data.source} world {data.world!r})"


def check_lengths(config: ml_collections.ConfigDict, splits: Mapping[str, Sequence[Mapping]],
                  tokenizer: Any, max_seq_len: int, *, training: bool = True
                  ) -> dict[str, list[Mapping]]:
    """The splits with every record fitted to each of its uses' limits under
    config.data.overlong (module docstring); raises loader.OverlongError under 'error'."""
    overlong = config.data.get("overlong", "error")
    if overlong not in loader.FIT_OVERLONG:
        raise ValueError(f"{OVERLONG_KEY}: {overlong!r} is not one of {loader.FIT_OVERLONG}")
    out = {name: list(records) for name, records in splits.items()}
    for limit in length_limits(config, max_seq_len, training=training):
        if not out.get(limit.split):
            continue  # a missing split is reported by whoever requires it
        what = f"split {limit.split!r}{_source_of(config, limit.split)}, {limit.use}"
        fixes = (f"Fix: {limit.fixes}, or set {OVERLONG_KEY}=skip (leave such records out) "
                 "or =truncate (cut their item title).")
        result = loader.fit_records(out[limit.split], tokenizer, max_len=limit.max_len,
                                    overlong=overlong, order=limit.order, what=what,
                                    fixes=fixes)
        for verb, ids in (("skipped", result.skipped), ("truncated the item title of",
                                                        result.truncated)):
            if ids:
                logging.warning("%s: %s %d record(s) over %d tokens (%s=%s); first ids: %s",
                                what, verb, len(ids), limit.max_len, OVERLONG_KEY, overlong,
                                ids[:_IDS_LOGGED])
        out[limit.split] = result.records
    return out
