"""Tiny finished runs for tests that need a real run directory (a few SFT steps)."""

from __future__ import annotations

import ml_collections

from experiments import registry, sft as sft_config
from she_jax import special_tokens as st


def tiny_sft_config(order: str = "answer_first", extra_orders: tuple[str, ...] = ()
                    ) -> ml_collections.ConfigDict:
    """experiments/sft.py shrunk to a 2-layer model, 4 updates and a 4-example evaluation."""
    config = sft_config.get_config("tiny")
    config.data.world_overrides = {"sft_size": 320, "rl_size": 64, "dev_size": 32,
                                   "test_size": 24}
    config.model.vocab_size = 1024
    config.model.preset = "tiny"
    config.model.overrides = {"num_layers": 2, "hidden_size": 64, "mlp_dim": 128}
    config.sft.buckets = (160,)  # one compiled train step
    config.sft.order = order
    config.sft.extra_orders = extra_orders
    config.optimizer.total_steps = 4
    config.optimizer.warmup_steps = 1
    config.batch.batch_size = 8
    config.log_every = 2
    config.checkpoint.every = 2
    config.eval.splits = ("dev",)
    config.eval.max_examples = 4
    config.eval.batch_size = 4
    config.eval.max_new_tokens = 16
    return config


def build_sft_run(workdir: str, order: str = "answer_first",
                  extra_orders: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """Trains and evaluates a tiny SFT run into `workdir`; returns its config."""
    config = tiny_sft_config(order, extra_orders)
    registry.run_config(config, workdir)
    return config


class WordTokenizer:
    """A Tokenizer stand-in for RL driver tests: each word of a text <-> one id in 10..37
    (a hash), no special structure; step markers 40..44, labels 45, 46, 47, 39."""
    pad_id, eos_id = 0, 1
    step_marker_ids = (40, 41, 42, 43, 44)
    label_ids = (45, 46, 47, 39)

    def encode(self, text):
        return [10 + sum(map(ord, w)) % 28 for w in text.split()][:12]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids, skip_special=False):
        """Words w<id>; a step marker or label id as its control token (as the real
        tokenizer writes them), so parsed rollouts carry their label."""
        special = dict(zip(self.step_marker_ids + self.label_ids,
                           st.STEP_MARKERS + st.LABEL_TOKENS))
        return " ".join(special.get(int(i), f"w{int(i)}") for i in ids)
