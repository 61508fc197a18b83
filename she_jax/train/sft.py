"""SFT with chain of thought: masked next-token loss on the target (trainer `sft`).

The target is the 5-step CoT plus the label token, in either order (config.sft.order):
'think_first' (steps, then the label) or 'answer_first' (the label, then the steps: the
TaoSR1 post-CoT form, whose label is read from the prefill alone at serving time).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from she_jax import parallel
from she_jax.data import cot, loader, resample, sources
from she_jax.data.cot import training_orders  # the orders SFT trains on
from she_jax.eval import evaluate
from she_jax.models import transformer
from she_jax.rl import rejection
from she_jax.train import bootstrap, loop


def sft_section() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.order = "answer_first"  # CoT order of the target: 'answer_first' | 'think_first'
    # Multi-task SFT: also train on every record rendered in these orders (each epoch holds
    # each record once per order). `order` stays the order the run is evaluated and served
    # in. ("think_first",) under answer_first supervises every intermediate fact in front of
    # the label it decides, which the answer-first target alone states only after it.
    # "checks" (training only) has the model state the category and attribute matches
    # straight after query and title, with no extraction step written out first.
    c.extra_orders = ()
    c.train_split = "sft"  # the split trained on
    # Train only the records that carry a gold CoT (every `sft` record does; the `rl` split
    # annotates `annotation_fraction` of its records). False also trains the others, on their
    # label token alone.
    c.require_cot = True
    # Record keys the trained label is made independent of, e.g. ("query_type",): the
    # records are resampled (same count) so that every query type holds the overall label
    # mix (she_jax.data.resample; ShopWorld's mixed splits give each type its own). () = off.
    # Measured on the sft_think_rl stage, 3 seeds each (docs/results/label_shift): macro-F1
    # within noise on every split, rule violations +4.1 points; RL is where it helps.
    c.label_independent_of = ()
    # Rejection-sampled chains (she_jax.rl.rejection): with rft.samples > 0, the train
    # split's records without a gold CoT are sampled from a policy (rft.policy_dir, or the
    # run's start) and those with a right, rule-abiding chain are trained as CoT records
    # beside the gold ones (<workdir>/rft_chains.jsonl).
    c.rft = rejection.rejection_config()
    c.buckets = (96, 128, 160)  # padded sequence lengths (one compiled step per bucket)
    # Loss weight of the label token relative to a CoT token (1.0 = plain token-mean SFT).
    # The label is one token among ~50 of CoT; answer-first puts the whole decision on it.
    c.label_weight = 1.0
    # Loss weight of the prompt's own tokens (query and title, predicted left to right)
    # relative to a target token; > 0 adds a language-model loss on the prompt.
    c.prompt_weight = 0.0
    # Loss weight of the lexical-overlap task (0 = off): at every title token the model also
    # tells whether that token occurs in the query, read as the " yes" / " no" logits of that
    # position (which nothing else uses while prompt_weight is 0). Self-supervised from the
    # prompt text alone: it gives the title positions the "same token as the query" feature
    # the label needs (is the query's brand, colour, size in the title?), which the one
    # label token per sequence teaches far more slowly. Training only; serving reads the
    # answer position alone.
    c.overlap_weight = 0.0
    return c


@dataclasses.dataclass(frozen=True)
class OverlapTask:
    """Token ids of the lexical-overlap task (`sft_section().overlap_weight`).

    query_id / item_id open the query and the title; `prompt_end_ids` are the tokens a
    prompt may end in (ANSWER, or a step marker); yes_id / no_id the two verdict tokens.
    """

    query_id: int
    item_id: int
    prompt_end_ids: tuple[int, ...]
    yes_id: int
    no_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> OverlapTask:
        verdicts = {}
        for word in ("yes", "no"):
            ids = tokenizer.encode(f" {word}")
            if len(ids) != 1:
                raise ValueError(f"config.sft.overlap_weight: the tokenizer splits {word!r} "
                                 f"into {len(ids)} tokens {ids}; the overlap task needs "
                                 "one token per verdict")
            verdicts[word] = ids[0]
        return cls(tokenizer.query_id, tokenizer.item_id,
                   (tokenizer.answer_id, *tokenizer.step_marker_ids),
                   verdicts["yes"], verdicts["no"])


def title_query_overlap(tokens: jax.Array, attention_mask: jax.Array,
                        task: OverlapTask) -> tuple[jax.Array, jax.Array]:
    """(in_title, overlaps), both [B, T] bool, for prompts `<|query|> q <|item|> t <end>`.

    in_title[b, t]: tokens[b, t] is a title token (after the item marker, before the first
    prompt-end token); overlaps[b, t]: that token id also occurs among the query's tokens.
    """
    def seen(*token_ids):  # [B, T]: one of token_ids occurs at or before t
        return jnp.cumsum(jnp.isin(tokens, jnp.asarray(token_ids)), axis=1) > 0

    in_query = seen(task.query_id) & ~seen(task.item_id) & (tokens != task.query_id)
    in_title = (seen(task.item_id) & ~seen(*task.prompt_end_ids) & (tokens != task.item_id)
                & attention_mask)
    same = tokens[:, :, None] == tokens[:, None, :]  # [B, T (title), T (query)]
    overlaps = jnp.any(same & in_query[:, None, :], axis=-1) & in_title
    return in_title, overlaps


def sft_loss_fn(model_config: transformer.ModelConfig, label_ids: tuple[int, ...],
                label_weight: float = 1.0, prompt_weight: float = 0.0,
                overlap_weight: float = 0.0, overlap_task: OverlapTask | None = None):
    """loss_fn(params, batch, rng) -> (loss_sum, aux) for `loop.make_train_step`.

    batch: tokens [B, T] int32, loss_mask [B, T] bool (True where tokens[t] is a target
    token, predicted from position t - 1), attention_mask [B, T] bool.
    Weighted token-mean over the whole batch: each target token has weight 1, a label
    token `label_weight`, every prompt token but the first (which nothing predicts)
    `prompt_weight` (0: prompts carry no loss); loss_sum = sum of weight * NLL, normalizer = sum of weights.
    overlap_weight > 0 (needs `overlap_task`) adds, at every title token, weight
    `overlap_weight` times the binary cross-entropy of "this token occurs in the query"
    against the logit difference (yes - no) at that position (`title_query_overlap`).
    aux adds token accuracy, accuracy and NLL on label tokens, and overlap accuracy.
    """
    label_ids_arr = jnp.asarray(label_ids, jnp.int32)
    if overlap_weight and overlap_task is None:
        raise ValueError("sft_loss_fn: overlap_weight > 0 needs overlap_task")

    def loss_fn(params: Any, batch: dict[str, jax.Array], rng: jax.Array):
        del rng
        tokens = batch["tokens"]
        logits = transformer.forward(model_config, params, tokens[:, :-1],
                                     batch["attention_mask"][:, :-1])
        targets = tokens[:, 1:]
        mask = batch["loss_mask"][:, 1:].astype(jnp.float32)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        nll = log_z - target_logit
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        is_label = jnp.any(targets[..., None] == label_ids_arr, axis=-1).astype(jnp.float32) * mask
        weight = mask + (label_weight - 1.0) * is_label
        if prompt_weight:
            in_prompt = batch["attention_mask"][:, 1:] & ~batch["loss_mask"][:, 1:]
            weight = weight + prompt_weight * in_prompt.astype(jnp.float32)
        aux = {
            "normalizer": weight.sum(),
            "token_accuracy": ((correct * mask).sum(), mask.sum()),
            "label_accuracy": ((correct * is_label).sum(), is_label.sum()),
            "label_nll": ((nll * is_label).sum(), is_label.sum()),
        }
        loss_sum = (nll * weight).sum()
        if overlap_weight:
            in_title, overlaps = title_query_overlap(
                tokens[:, :-1], batch["attention_mask"][:, :-1], overlap_task)
            margin = logits[..., overlap_task.yes_id] - logits[..., overlap_task.no_id]
            sign = jnp.where(overlaps, 1.0, -1.0)
            in_title = in_title.astype(jnp.float32)
            overlap_nll = jax.nn.softplus(-sign * margin) * in_title
            loss_sum = loss_sum + overlap_weight * overlap_nll.sum()
            aux["normalizer"] = aux["normalizer"] + overlap_weight * in_title.sum()
            aux["overlap_accuracy"] = (((sign * margin > 0) * in_title).sum(), in_title.sum())
        return loss_sum, aux

    return loss_fn


class _Repeating:
    """Batches of a finite BatchDataset over epochs, with a checkpointable position; `rows`
    of each global batch only (a process's rows: `parallel.process_batch_rows`)."""

    def __init__(self, dataset: loader.BatchDataset, rows: slice = slice(None)):
        self.dataset = dataset
        self.rows = rows
        self.index = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.dataset[self.index]
        self.index += 1
        return {k: batch[k][self.rows] for k in ("tokens", "loss_mask", "attention_mask")}

    def get_state(self) -> dict[str, int]:
        return {"index": self.index}

    def set_state(self, position: dict[str, int]) -> None:
        self.index = int(position["index"])


def training_records(section: Mapping[str, Any], splits: Mapping[str, Sequence[Mapping]],
                     seed: int = 0) -> Sequence[Mapping]:
    """The records of `section.train_split` SFT trains on: with `require_cot`, only those that
    carry a gold CoT; with `label_independent_of`, those resampled (seeded by `seed`) so the
    label is independent of the keys. Errors name the config key."""
    split = section["train_split"]
    records = sources.require_split(splits, split, "config.sft.train_split")
    if section["require_cot"]:
        kept = cot.gold_cot_records(records, f"config.sft.train_split={split!r}")
        if len(kept) < len(records):
            logging.info("sft: %d of %d %r records carry a gold CoT and are trained "
                         "(config.sft.require_cot)", len(kept), len(records), split)
        records = kept
    keys = resample.check_keys(section.get("label_independent_of", ()),
                               "config.sft.label_independent_of")
    if keys:
        try:
            records = resample.resample_label_independent(records, keys, seed=seed)
        except ValueError as e:
            raise ValueError(f"config.sft.label_independent_of={keys!r} on "
                             f"config.sft.train_split={split!r}: {e}") from None
        logging.info("sft: %d records resampled with the label independent of %s",
                     len(records), keys)
    return records


def needs_prerequisite(config: ml_collections.ConfigDict, name: str) -> bool:
    """experiments.registry hook: the policy rejection sampling reads is built only when
    the run samples chains (config.sft.rft.samples > 0)."""
    if (config.get("prerequisites", None) or {}).get(name) == "sft.rft.policy_dir":
        return bool(config.sft.get("rft", {}).get("samples", 0))
    return True


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, exports <workdir>/model, evaluates into <workdir>/eval.json; returns eval."""
    splits, tokenizer, model_config, params = bootstrap.start_run(config, workdir)

    records = training_records(config.sft, splits, seed=config.data_seed)
    if config.sft.get("rft", {}).get("samples", 0):
        split = sources.require_split(splits, config.sft.train_split, "config.sft.train_split")
        chains = rejection.chains_for_sft(config, workdir, split,
                                          is_main=parallel.is_main_process())
        logging.info("sft: %d gold records + %d rejection-sampled chains", len(records),
                     len(chains))
        records = list(records) + chains
    orders = training_orders(config.sft)
    dataset = loader.sft_dataset(
        records, tokenizer, batch_size=config.batch.batch_size, buckets=config.sft.buckets,
        order=orders, seed=config.data_seed, shuffle=True, num_epochs=None)
    logging.info("sft: %d records in %s, %d batches per epoch, %d steps", len(records),
                 orders, dataset.batches_per_epoch, config.optimizer.total_steps)

    params, mesh, rules = bootstrap.shard_model(config, model_config, params)
    overlap_task = (OverlapTask.from_tokenizer(tokenizer) if config.sft.overlap_weight
                    else None)
    loss_fn = sft_loss_fn(model_config, tokenizer.label_ids, config.sft.label_weight,
                          config.sft.prompt_weight, config.sft.overlap_weight, overlap_task)
    state, step_fn = bootstrap.train_state_and_step(config, params, loss_fn, mesh, rules)
    rows = parallel.process_batch_rows(mesh, config.batch.batch_size)
    state = loop.train_loop(
        train_step=step_fn, state=state, data=_Repeating(dataset, rows), workdir=workdir,
        total_steps=config.optimizer.total_steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint.every, checkpoint_keep=config.checkpoint.keep)
    if not bootstrap.finish_training(config, workdir, model_config, state):
        return {}
    return bootstrap.evaluate_on_main_process(state.params, lambda params: evaluate.evaluate_run(
        config, workdir, model_config, params, tokenizer, splits))
