"""SRPO's hybrid step reward: the offline verifier where a step is annotated, the generative
step reward model (genrm) elsewhere, or a mix of both.

Per (rollout, step), `config.source` picks who scores it:
  'verifier': the verifier, on annotated steps only (other steps get no reward);
  'genrm':    the reward model, on every step the rollout has;
  'hybrid':   the verifier where the step is annotated, else the reward model;
  'mix':      mix_weight * verifier + (1 - mix_weight) * reward model where the step is
              annotated and present, the verifier alone where it is annotated but absent
              from the rollout (the reward model has nothing to score), the reward model
              where it is not annotated.
The reward model only scores steps the rollout has (`genrm_present`); the verifier also
scores an annotated step the rollout lacks, as a failed step.

Step reward of a source, with c = correct_step_reward and w = wrong_step_reward:
  verifier: c if the step is verified correct else w;
  genrm:    w + (c - w) * p with `genrm_soft` (the expected reward under the model's
            P(step correct) = p), else c if p >= genrm_threshold else w.
`step_correct` is the decision the critical-step weighting uses: the verifier's verdict;
p >= genrm_threshold for the reward model; for 'mix', mix_weight * [verified] +
(1 - mix_weight) * p >= genrm_threshold.

`outcome_weight` is not used here: it is the weight of the outcome reward against the step
rewards when the advantage is formed (she_jax.rl.advantages reads it from this config).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from she_jax.rewards.outcome import check_number
from she_jax.special_tokens import STEP_NAMES

SOURCES = ("verifier", "genrm", "hybrid", "mix")
# Values of the returned 'source' array.
SOURCE_NONE, SOURCE_VERIFIER, SOURCE_GENRM, SOURCE_MIX = 0, 1, 2, 3
SOURCE_NAMES = ("none", "verifier", "genrm", "mix")


def hybrid_config() -> ml_collections.ConfigDict:
    """Defaults for `hybrid_step_rewards`."""
    config = ml_collections.ConfigDict()
    config.source = "hybrid"  # who scores a step: 'verifier' | 'genrm' | 'hybrid' | 'mix'
    config.mix_weight = 0.5  # weight of the verifier in 'mix' (the reward model gets 1 - it)
    config.correct_step_reward = 1.0  # reward of a step judged correct
    config.wrong_step_reward = 0.0  # reward of a step judged wrong
    config.genrm_soft = True  # reward-model steps get the expected reward, not a 0/1 decision
    config.genrm_threshold = 0.5  # P(step correct) at or above which a step counts as correct
    config.outcome_weight = 1.0  # weight of the outcome reward in the advantage (rl.advantages)
    return config


def check_hybrid_config(config: Mapping[str, Any]) -> None:
    """ValueError naming the bad key."""
    if config["source"] not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {config['source']!r}")
    check_number(config, "mix_weight", 0.0, 1.0)
    correct = check_number(config, "correct_step_reward")
    wrong = check_number(config, "wrong_step_reward")
    if correct <= wrong:
        raise ValueError(f"correct_step_reward ({correct}) must be greater than "
                         f"wrong_step_reward ({wrong})")
    if not isinstance(config["genrm_soft"], bool):
        raise ValueError(f"genrm_soft must be a bool, got {config['genrm_soft']!r}")
    check_number(config, "genrm_threshold", 0.0, 1.0)
    check_number(config, "outcome_weight", low=0.0)


def _check_genrm(genrm_probs: Any, genrm_present: Any, shape: tuple[int, ...],
                 source: str) -> tuple[np.ndarray, np.ndarray]:
    if genrm_probs is None:
        raise ValueError(f"source {source!r} needs genrm_probs [B, G, S] (P(step correct) from "
                         "the generative reward model), got None; use source='verifier' to "
                         "train without a reward model")
    probs = np.asarray(genrm_probs, dtype=np.float64)
    if probs.shape != shape:
        raise ValueError(f"genrm_probs has shape {probs.shape}, expected {shape}")
    present = np.asarray(genrm_present)
    if present.shape != shape or present.dtype != bool:
        raise ValueError(f"genrm_present must be a bool array of shape {shape}, got "
                         f"{present.dtype} {present.shape}")
    used = probs[present]  # only the steps the rollout has are read
    if not np.isfinite(used).all():
        raise FloatingPointError("genrm_probs has a NaN or inf value at a present step")
    if ((used < 0) | (used > 1)).any():
        raise ValueError(f"genrm_probs must be probabilities in [0, 1] at present steps, got "
                         f"min {used.min()} max {used.max()}")
    return np.where(present, probs, 0.0), present


def hybrid_step_rewards(verified: Mapping[str, np.ndarray], genrm_probs: np.ndarray | None,
                        genrm_present: np.ndarray | None,
                        config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Step rewards from the verifier, the reward model or both (module docstring).

    Args:
      verified: `verifier.verify_batch` output ('step_correct', 'step_known',
        'step_present' [B, G, S] bool).
      genrm_probs: [B, G, S] P(step correct) from the reward model, or None (only allowed
        with source 'verifier'); read only where genrm_present.
      genrm_present: [B, G, S] bool, the step exists in the rollout; None = the verifier's
        'step_present'.
      config: `hybrid_config()` or an override of it.

    Returns:
      {'step_rewards': [B, G, S] float32 (0 where not valid),
       'step_valid': [B, G, S] bool (some source scored the step),
       'step_correct': [B, G, S] bool (the decision for critical-step weighting; False where
         not valid),
       'source': [B, G, S] int8 (SOURCE_NONE/VERIFIER/GENRM/MIX)}.
    """
    config = hybrid_config() if config is None else config
    check_hybrid_config(config)
    source = config["source"]
    known = np.asarray(verified["step_known"], dtype=bool)
    verifier_correct = np.asarray(verified["step_correct"], dtype=bool) & known
    shape = known.shape
    if genrm_present is None:
        genrm_present = verified["step_present"]
    if source == "verifier":
        probs, present = np.zeros(shape), np.zeros(shape, dtype=bool)
    else:
        probs, present = _check_genrm(genrm_probs, genrm_present, shape, source)

    if source == "verifier":
        origin = np.where(known, SOURCE_VERIFIER, SOURCE_NONE)
    elif source == "genrm":
        origin = np.where(present, SOURCE_GENRM, SOURCE_NONE)
    elif source == "hybrid":
        origin = np.where(known, SOURCE_VERIFIER, np.where(present, SOURCE_GENRM, SOURCE_NONE))
    else:
        origin = np.where(known & present, SOURCE_MIX,
                          np.where(known, SOURCE_VERIFIER,
                                   np.where(present, SOURCE_GENRM, SOURCE_NONE)))

    high, low = config["correct_step_reward"], config["wrong_step_reward"]
    threshold, weight = config["genrm_threshold"], config["mix_weight"]
    genrm_correct = probs >= threshold
    verifier_reward = np.where(verifier_correct, high, low)
    genrm_reward = (low + (high - low) * probs if config["genrm_soft"]
                    else np.where(genrm_correct, high, low))
    mixed_prob = weight * verifier_correct + (1.0 - weight) * probs
    rewards = np.select(
        [origin == SOURCE_VERIFIER, origin == SOURCE_GENRM, origin == SOURCE_MIX],
        [verifier_reward, genrm_reward, weight * verifier_reward + (1.0 - weight) * genrm_reward],
        0.0)
    step_correct = np.select(
        [origin == SOURCE_VERIFIER, origin == SOURCE_GENRM, origin == SOURCE_MIX],
        [verifier_correct, genrm_correct, mixed_prob >= threshold], False)
    return {"step_rewards": rewards.astype(np.float32), "step_valid": origin != SOURCE_NONE,
            "step_correct": step_correct.astype(bool), "source": origin.astype(np.int8)}


def hybrid_metrics(step_out: Mapping[str, np.ndarray], verified: Mapping[str, np.ndarray],
                   genrm_probs: np.ndarray | None, genrm_present: np.ndarray | None,
                   config: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Scalar logging metrics of `hybrid_step_rewards` output (same inputs).

    'step_reward/share_<none|verifier|genrm|mix>': share of all B*G*S steps by source;
    'step_reward/mean', 'step_reward/correct_rate': over valid steps (0.0 when none);
    'step_reward/mean/<step>': per step over valid ones;
    'step_reward/agreement': where the step is annotated and the reward model scored it,
    the share where the verifier's verdict equals p >= genrm_threshold (0.0 when none, see
    'step_reward/agreement_count'), whichever source was used.
    """
    config = hybrid_config() if config is None else config
    origin = np.asarray(step_out["source"])
    valid = np.asarray(step_out["step_valid"], dtype=bool)
    rewards = np.asarray(step_out["step_rewards"], dtype=np.float64)
    out = {f"step_reward/share_{name}": float(np.mean(origin == code))
           for code, name in enumerate(SOURCE_NAMES)}
    count = valid.sum()
    out["step_reward/mean"] = float(rewards[valid].mean()) if count else 0.0
    out["step_reward/correct_rate"] = (float(step_out["step_correct"][valid].mean())
                                       if count else 0.0)
    for s, name in enumerate(STEP_NAMES):
        step_valid = valid[..., s]
        out[f"step_reward/mean/{name}"] = (float(rewards[..., s][step_valid].mean())
                                           if step_valid.any() else 0.0)
    known = np.asarray(verified["step_known"], dtype=bool)
    if genrm_probs is None:
        both = np.zeros_like(known)
        agree = both
    else:
        present = np.asarray(verified["step_present"] if genrm_present is None else genrm_present,
                             dtype=bool)
        both = known & present
        genrm_correct = np.asarray(genrm_probs) >= config["genrm_threshold"]
        agree = both & (genrm_correct == np.asarray(verified["step_correct"], dtype=bool))
    out["step_reward/agreement_count"] = float(both.sum())
    out["step_reward/agreement"] = float(agree.sum() / both.sum()) if both.any() else 0.0
    return out
