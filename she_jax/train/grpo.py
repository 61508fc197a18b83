"""GRPO with difficulty-based dynamic sampling (TaoSR1 stage 3), trainer `grpo`.

Reward = the outcome reward (label correct, plus a format term: she_jax.rewards.outcome);
sequence-level group-relative advantages; the clipped objective with KL to the starting
policy. Everything else — sampling, filtering, the update — is the shared RL driver
(she_jax.train.rl), so GRPO is the baseline SRPO and AGRL are measured against.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from she_jax.rewards import outcome
from she_jax.train import rl


def make_outcome_scorer(config: ml_collections.ConfigDict, tokenizer: Any, splits: Any,
                        order: str) -> rl.Scorer:
    del tokenizer, splits, order
    reward_config = config.reward

    def score(rollouts: rl.Rollouts) -> rl.Scored:
        out = outcome.outcome_rewards(rollouts.parsed, rollouts.records, reward_config)
        return rl.Scored(rewards=out["reward"], correct=out["correct"].astype(bool),
                         per_rollout={"format_valid": out["format_valid"]},
                         metrics=outcome.outcome_metrics(out))

    return score


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    return rl.train_rl(config, workdir, make_scorer=make_outcome_scorer)
