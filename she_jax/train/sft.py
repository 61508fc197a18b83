"""SFT with chain of thought: masked next-token loss on the target (trainer `sft`).

The target is the 5-step CoT plus the label token, in either order (config.sft.order):
'think_first' (steps, then the label) or 'answer_first' (the label, then the steps: the
TaoSR1 post-CoT form, whose label is read from the prefill alone at serving time).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from she_jax.data import cot, loader, sources
from she_jax.eval import evaluate
from she_jax.models import transformer
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
    c.buckets = (96, 128, 160)  # padded sequence lengths (one compiled step per bucket)
    # Loss weight of the label token relative to a CoT token (1.0 = plain token-mean SFT).
    # The label is one token among ~50 of CoT; answer-first puts the whole decision on it.
    c.label_weight = 1.0
    # Loss weight of the prompt's own tokens (query and title, predicted left to right)
    # relative to a target token; > 0 adds a language-model loss on the prompt.
    c.prompt_weight = 0.0
    return c


def sft_loss_fn(model_config: transformer.ModelConfig, label_ids: tuple[int, ...],
                label_weight: float = 1.0, prompt_weight: float = 0.0):
    """loss_fn(params, batch, rng) -> (loss_sum, aux) for `loop.make_train_step`.

    batch: tokens [B, T] int32, loss_mask [B, T] bool (True where tokens[t] is a target
    token, predicted from position t - 1), attention_mask [B, T] bool.
    Weighted token-mean over the whole batch: each target token has weight 1, a label
    token `label_weight`, every prompt token but the first (which nothing predicts)
    `prompt_weight` (0: prompts carry no loss); loss_sum = sum of weight * NLL, normalizer = sum of weights.
    aux adds token accuracy, and accuracy and NLL on label tokens.
    """
    label_ids_arr = jnp.asarray(label_ids, jnp.int32)

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
        return (nll * weight).sum(), aux

    return loss_fn


def training_orders(sft_config: ml_collections.ConfigDict) -> str | tuple[str, ...]:
    """config.sft.order, or (order, *extra_orders) when extra orders are set (validated)."""
    extra = tuple(sft_config.extra_orders)
    if sft_config.order not in cot.ORDERS:
        raise ValueError(f"config.sft.order: {sft_config.order!r} is not one of {cot.ORDERS}")
    for name in extra:
        if name not in cot.TRAINING_ORDERS:
            raise ValueError(f"config.sft.extra_orders: {name!r} is not one of "
                             f"{cot.TRAINING_ORDERS}")
    if sft_config.order in extra or len(set(extra)) != len(extra):
        raise ValueError(f"config.sft.extra_orders {extra} must not repeat an order or "
                         f"config.sft.order ({sft_config.order!r})")
    return (sft_config.order, *extra) if extra else sft_config.order


class _Repeating:
    """Batches of a finite BatchDataset over epochs, with a checkpointable position."""

    def __init__(self, dataset: loader.BatchDataset):
        self.dataset = dataset
        self.index = 0

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.dataset[self.index]
        self.index += 1
        return {k: batch[k] for k in ("tokens", "loss_mask", "attention_mask")}

    def get_state(self) -> dict[str, int]:
        return {"index": self.index}

    def set_state(self, position: dict[str, int]) -> None:
        self.index = int(position["index"])


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, exports <workdir>/model, evaluates into <workdir>/eval.json; returns eval."""
    splits, tokenizer, model_config, params = bootstrap.start_run(config, workdir)

    records = sources.require_split(splits, config.sft.train_split, "config.sft.train_split")
    orders = training_orders(config.sft)
    dataset = loader.sft_dataset(
        records, tokenizer, batch_size=config.batch.batch_size, buckets=config.sft.buckets,
        order=orders, seed=config.data_seed, shuffle=True, num_epochs=None)
    logging.info("sft: %d records in %s, %d batches per epoch, %d steps", len(records),
                 orders, dataset.batches_per_epoch, config.optimizer.total_steps)

    params, mesh, rules = bootstrap.shard_model(config, model_config, params)
    loss_fn = sft_loss_fn(model_config, tokenizer.label_ids, config.sft.label_weight,
                          config.sft.prompt_weight)
    state, step_fn = bootstrap.train_state_and_step(config, params, loss_fn, mesh, rules)
    state = loop.train_loop(
        train_step=step_fn, state=state, data=_Repeating(dataset), workdir=workdir,
        total_steps=config.optimizer.total_steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint.every, checkpoint_keep=config.checkpoint.keep)
    if not bootstrap.finish_training(config, workdir, model_config, state):
        return {}
    return evaluate.evaluate_run(config, workdir, model_config, state.params, tokenizer, splits)
