"""SHE's Stepwise Reward Policy Optimization (SRPO), trainer `srpo`.

On top of the shared RL driver (she_jax.train.rl):
  - step rewards from a hybrid of the offline annotated verifier (prompts with step
    annotations) and the generative step reward model (everywhere else), or either alone,
    or a weighted mix (config.srpo.step_reward, she_jax.rewards.hybrid), plus the outcome
    reward from the label;
  - step-level token advantages (per-step group normalization or the DeepSeekMath process
    form), the outcome advantage added with a weight, critical-step prioritization
    (config.rl.advantage, she_jax.rl.advantages);
  - entropy regularization (config.rl.loss.entropy_coef) and diversified data filtering
    (config.rl.filter);
  - a multi-stage curriculum (config.curriculum, she_jax.rl.curriculum): each stage starts
    from the previous stage's checkpoint.
Every reward component is logged on its own ('reward/', 'verifier/', 'step_reward/').
"""

from __future__ import annotations

from typing import Any

import ml_collections

from she_jax.rewards import hybrid, outcome, verifier
from she_jax.train import rl

GENRM_SOURCES = ("genrm", "hybrid", "mix")


def srpo_section() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.step_reward = hybrid.hybrid_config()
    c.genrm_dir = ""  # finished genrm run (experiments.run fills it from 'genrm')
    return c


def needs_prerequisite(config: ml_collections.ConfigDict, name: str) -> bool:
    """experiments.registry hook: the reward model run is built only when a step-reward
    source reads it, the SFT run's pass rates only when the curriculum is on."""
    if name == "genrm":
        return config.srpo.step_reward.source in GENRM_SOURCES
    if name == "sft_think":  # the pass rates the curriculum selects prompts by
        return bool(config.get("curriculum", {}).get("enabled", False))
    return True


def make_srpo_scorer(config: ml_collections.ConfigDict, tokenizer: Any, splits: Any,
                     order: str) -> rl.Scorer:
    del tokenizer, splits, order
    step_config = config.srpo.step_reward
    reward_model = None
    if step_config.source in GENRM_SOURCES:
        if not config.srpo.genrm_dir:
            raise ValueError(f"config.srpo.step_reward.source={step_config.source!r} needs the "
                             "generative reward model: set config.srpo.genrm_dir (or keep "
                             "config.prerequisites['genrm'] so experiments.run builds it)")
        from she_jax.rewards import genrm
        reward_model = genrm.StepRewardModel.load(config.srpo.genrm_dir,
                                                  dtype=config.model.dtype)

    def score(rollouts: rl.Rollouts) -> rl.Scored:
        out = outcome.outcome_rewards(rollouts.parsed, rollouts.records, config.reward)
        verified = verifier.verify_batch(rollouts.parsed, rollouts.records)
        probs = present = None
        if reward_model is not None:
            probs, present = reward_model.score(rollouts.parsed, rollouts.records)
        steps = hybrid.hybrid_step_rewards(verified, probs, present, step_config)
        metrics = {**outcome.outcome_metrics(out), **verifier.verifier_metrics(verified),
                   **hybrid.hybrid_metrics(steps, verified, probs, present, step_config)}
        return rl.Scored(
            rewards=out["reward"], correct=out["correct"].astype(bool),
            step_rewards=steps["step_rewards"], step_valid=steps["step_valid"],
            step_correct=steps["step_correct"],
            per_rollout={"step_valid": steps["step_valid"],
                         "format_valid": out["format_valid"]},
            metrics=metrics)

    return score


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    return rl.train_rl(config, workdir, make_scorer=make_srpo_scorer)
