"""Advantages for group-sampled RL: GRPO outcome advantages and SRPO step advantages.

Shapes: B prompts, G samples per prompt, N = B * G flat rows (row n = b * G + g), T token
positions, S = 5 CoT steps. Token step ids follow `she_jax.data.cot.step_ids_for_tokens`:
0..S-1 = a step, 5 = the label token (`cot.LABEL_STEP_ID`), -1 = none / padding.

Everything is jnp; options are static Python values (keyword args or the frozen
`StepAdvantageConfig`). The functions are jitted (one compile per option set, inlined when
called inside another jit); `token_advantages` is the entry point the trainers call, and
the pieces are public so each can be tested and reused on its own.

Normalization (one rule everywhere): mean and POPULATION std (ddof=0) over the valid
entries of a group, advantage = (r - mean) / (std + eps). Population rather than unbiased:
it is defined for any number of valid entries (a group cut down to one valid rollout by the
mask, or G = 1, gives 0 instead of 0/0), and it makes the normalized group have unit RMS
exactly. TRL's and verl's GRPO use the unbiased std, i.e. advantages sqrt(G / (G - 1))
times smaller than these (3 % at G = 16): a scale that the learning rate absorbs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from she_jax import special_tokens

SCALES = ("std", "none", "mean")
STEP_MODES = ("per_step", "process")
ADVANTAGE_MODES = ("outcome",) + STEP_MODES
NUM_STEPS = len(special_tokens.STEP_NAMES)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_shape(name: str, array: jax.Array, shape: tuple[int, ...]) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}, expected {tuple(shape)}")


def _standardize(values: jax.Array, valid: jax.Array, axes: tuple[int, ...], scale: str,
                 eps: float) -> tuple[jax.Array, jax.Array]:
    """(values - mean) [/ (std + eps)] over `axes`, statistics over valid entries only.

    Returns (normalized values with invalid entries 0, valid count with `axes` kept as 1).
    """
    valid = valid.astype(bool)
    count = jnp.sum(valid, axis=axes, keepdims=True, dtype=jnp.float32)
    safe_count = jnp.maximum(count, 1.0)
    values = jnp.where(valid, values.astype(jnp.float32), 0.0)
    mean = jnp.sum(values, axis=axes, keepdims=True) / safe_count
    centered = jnp.where(valid, values - mean, 0.0)
    if scale == "std":
        std = jnp.sqrt(jnp.sum(centered * centered, axis=axes, keepdims=True) / safe_count)
        centered = centered / (std + eps)
    elif scale == "mean":
        # The group's success rate: rewards clipped to [0, 1] (a penalty below 0 is no
        # success), floored at one success among the valid entries.
        success = jnp.sum(jnp.clip(values, 0.0, 1.0), axis=axes, keepdims=True) / safe_count
        centered = centered / jnp.maximum(success, 1.0 / safe_count)
    return centered, count


@functools.partial(jax.jit, static_argnames=("scale", "eps"))
def group_advantages(rewards: jax.Array, *, scale: str = "std", eps: float = 1e-6,
                     valid: jax.Array | None = None) -> jax.Array:
    """GRPO group-relative advantages.

    rewards: [B, G] float; valid: [B, G] bool or None (all valid). Rows outside the batch
    (valid False) get 0 and are left out of their group's mean and std.
    scale 'std': (r - mean) / (std + eps), std the population std (see the module
    docstring); 'none': r - mean (Dr.GRPO, which drops the std to avoid up-weighting
    groups with nearly equal rewards); 'mean': (r - mean) / p, p the group's success rate
    (the mean of the rewards clipped to [0, 1], at least 1 / the valid count). With a 0/1
    reward, E[(r - p) grad log pi] / p = grad log p: the update climbs the log-likelihood
    of a right answer, sum_x log p(x), not the expected accuracy sum_x p(x) — the same
    objective as SFT's, whose optimum on examples the policy cannot tell apart is their
    label mix, not the majority label (accuracy's optimum, which drags the predicted mix
    toward it). It also weights a prompt by 1 / p: hard prompts count most. (Maximum
    likelihood RL; leave the clamp off, `advantage.clamp=0`, so the 1 / p weight survives.)
    Measured (docs/results/ladder_mle): the argument holds on the golden bandit; from the
    tiny think-first start, whose label follows its chain of thought, the mix holds only
    with the rule penalty, which the 1 / p weight makes count most on hard prompts.
    A group whose rewards are all equal gets 0.
    Returns [B, G] float32.
    """
    _check_choice("scale", scale, SCALES)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    if valid is None:
        valid = jnp.ones(rewards.shape, bool)
    _check_shape("valid", valid, rewards.shape)
    advantages, _ = _standardize(rewards, valid, (1,), scale, eps)
    return advantages


def sequence_to_token(adv: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """One advantage per sequence, broadcast to its tokens: [N], [N, T] bool -> [N, T]."""
    if adv.ndim != 1 or loss_mask.ndim != 2 or loss_mask.shape[0] != adv.shape[0]:
        raise ValueError(f"adv [N] and loss_mask [N, T] disagree: shapes "
                         f"{tuple(adv.shape)} and {tuple(loss_mask.shape)}")
    return jnp.where(loss_mask.astype(bool), adv[:, None].astype(jnp.float32), 0.0)


def clamp_advantages(adv: jax.Array, max_abs: float) -> jax.Array:
    """Clips advantages to [-max_abs, max_abs]; max_abs <= 0 leaves them unchanged.

    max_abs is a static Python number (the sibling GRPO setup clamps per token at 2).
    """
    if max_abs <= 0:
        return adv
    return jnp.clip(adv, -max_abs, max_abs)


@functools.partial(jax.jit, static_argnames=("mode", "scale", "eps"))
def step_group_advantages(step_rewards: jax.Array, step_valid: jax.Array, *,
                          mode: str = "per_step", scale: str = "std",
                          eps: float = 1e-6) -> jax.Array:
    """SRPO step advantages from step rewards.

    step_rewards: [B, G, S] float; step_valid: [B, G, S] bool (False: no reward for that
    step of that rollout, or the rollout is not in the batch).
    mode 'per_step': step s of each group is normalized on its own, over the group's valid
      entries of step s: (r - mean_s) / (std_s + eps). Invalid entries, and every entry of
      a step with fewer than 2 valid entries (no comparison to learn from), get 0.
    mode 'process' (DeepSeekMath process supervision): all valid step rewards of the group
      are normalized together (one mean and std over G x S), then the advantage of step s
      is the sum of the normalized rewards of the valid steps s' >= s: a token is credited
      with the rewards of its own step and of every later step it leads to. This holds for
      an invalid step too (its tokens still precede the later rewards); a group with fewer
      than 2 valid step rewards gets 0.
    scale: 'std', 'none' (mean-centring only) or 'mean' (divided by the success rate), as
    in `group_advantages`.
    Returns [B, G, S] float32.
    """
    _check_choice("mode", mode, STEP_MODES)
    _check_choice("scale", scale, SCALES)
    if step_rewards.ndim != 3:
        raise ValueError(f"step_rewards must be [B, G, S], got shape {tuple(step_rewards.shape)}")
    _check_shape("step_valid", step_valid, step_rewards.shape)
    if mode == "per_step":
        normalized, count = _standardize(step_rewards, step_valid, (1,), scale, eps)
        return jnp.where(count >= 2, normalized, 0.0)
    normalized, count = _standardize(step_rewards, step_valid, (1, 2), scale, eps)
    normalized = jnp.where(count >= 2, normalized, 0.0)
    return jnp.flip(jnp.cumsum(jnp.flip(normalized, -1), axis=-1), -1)


@functools.partial(jax.jit, static_argnames=("first_error", "divergent", "after_error",
                                             "consensus"))
def critical_step_weights(step_correct: jax.Array, step_valid: jax.Array,
                          outcome_correct: jax.Array, *, first_error: float = 2.0,
                          divergent: float = 1.5, after_error: float = 0.5,
                          consensus: float = 0.5) -> jax.Array:
    """Weights that emphasise the steps SRPO should learn most from.

    step_correct, step_valid: [B, G, S] bool; outcome_correct: [B, G] bool.
    Categories, over valid entries only:
      first_error: the first wrong step of a rollout whose final label is wrong (where the
        chain went off);
      divergent: a step whose correctness differs across the group's valid entries (the
        group shows both a right and a wrong way to do it);
      after_error: the steps after the first error of a wrong rollout (their credit is
        confounded by the earlier mistake);
      consensus: a step that >= 2 valid entries of the group all got right, or all wrong
        (nothing to contrast).
    Combination: if any up-weight category (first_error, divergent) applies, the weight is
    the max of the applicable up-weights; otherwise, if any down-weight category
    (after_error, consensus) applies, the min of those; otherwise 1. So a first error that
    is also divergent gets max(first_error, divergent), and an after-error step that is
    divergent keeps the divergent weight (up-weights win). Invalid entries get 1, so the
    weights leave masking to the advantages. Returns [B, G, S] float32.
    """
    for name, value in (("first_error", first_error), ("divergent", divergent),
                        ("after_error", after_error), ("consensus", consensus)):
        if value < 0:
            raise ValueError(f"critical weight {name} must be >= 0, got {value}")
    if step_correct.ndim != 3:
        raise ValueError(f"step_correct must be [B, G, S], got shape {tuple(step_correct.shape)}")
    _check_shape("step_valid", step_valid, step_correct.shape)
    _check_shape("outcome_correct", outcome_correct, step_correct.shape[:2])
    valid = step_valid.astype(bool)
    correct = step_correct.astype(bool) & valid
    wrong = valid & ~step_correct.astype(bool)
    num_steps = step_correct.shape[-1]
    step_index = jnp.arange(num_steps)
    first_wrong = jnp.min(jnp.where(wrong, step_index, num_steps), axis=-1)[..., None]
    wrong_outcome = ~outcome_correct.astype(bool)[..., None]
    is_first_error = wrong_outcome & wrong & (step_index == first_wrong)
    is_after_error = wrong_outcome & valid & (step_index > first_wrong)
    num_valid = jnp.sum(valid, axis=1, keepdims=True)
    num_correct = jnp.sum(correct, axis=1, keepdims=True)
    is_divergent = valid & (num_correct > 0) & (num_correct < num_valid)
    is_consensus = valid & (num_valid >= 2) & ((num_correct == 0) | (num_correct == num_valid))

    up = jnp.maximum(jnp.where(is_first_error, first_error, -jnp.inf),
                     jnp.where(is_divergent, divergent, -jnp.inf))
    down = jnp.minimum(jnp.where(is_after_error, after_error, jnp.inf),
                       jnp.where(is_consensus, consensus, jnp.inf))
    weights = jnp.where(is_first_error | is_divergent, up,
                        jnp.where(is_after_error | is_consensus, down, 1.0))
    return weights.astype(jnp.float32)


@jax.jit
def step_to_token_advantages(step_adv: jax.Array, token_step_ids: jax.Array, *,
                             outcome_adv: jax.Array | None = None,
                             outcome_weight: float = 1.0) -> jax.Array:
    """Per-token advantages from per-step ones.

    step_adv: [B, G, S]; token_step_ids: [N, T] int32 (N = B * G, row b * G + g);
    outcome_adv: [B, G] or None (0). A token of step s (0 <= id < S) gets
    step_adv[b, g, s] + outcome_weight * outcome_adv[b, g]; a label token (id 5), a token
    outside any step (-1) or any other id gets the outcome term only.
    Returns [N, T] float32 (masking by the loss mask is the caller's job).
    """
    if step_adv.ndim != 3:
        raise ValueError(f"step_adv must be [B, G, S], got shape {tuple(step_adv.shape)}")
    b, g, s = step_adv.shape
    if token_step_ids.ndim != 2 or token_step_ids.shape[0] != b * g:
        raise ValueError(f"token_step_ids must be [N = B * G = {b * g}, T], got shape "
                         f"{tuple(token_step_ids.shape)}")
    per_row = step_adv.reshape(b * g, s).astype(jnp.float32)
    in_step = (token_step_ids >= 0) & (token_step_ids < s)
    gathered = jnp.take_along_axis(per_row, jnp.clip(token_step_ids, 0, s - 1), axis=1)
    per_token = jnp.where(in_step, gathered, 0.0)
    if outcome_adv is not None:
        _check_shape("outcome_adv", outcome_adv, (b, g))
        per_token = per_token + outcome_weight * outcome_adv.reshape(b * g, 1).astype(
            jnp.float32)
    return per_token


@dataclasses.dataclass(frozen=True)
class StepAdvantageConfig:
    """How `token_advantages` turns rewards into per-token advantages (frozen: a static
    jit argument; build it from a config section with `StepAdvantageConfig(**section)`)."""

    # 'outcome': plain GRPO (one sequence advantage on every token); 'per_step' /
    # 'process': SRPO step advantages (see step_group_advantages) plus the outcome term.
    mode: str = "outcome"
    # Group normalization of outcome and step rewards: 'std' (GRPO) | 'none' (Dr.GRPO) |
    # 'mean' (maximum-likelihood RL: divided by the group's success rate).
    scale: str = "std"
    # Weight of the outcome (sequence) advantage added to every token in the step modes.
    outcome_weight: float = 1.0
    # Weight of the step advantage in the step modes.
    step_weight: float = 1.0
    # Multiply step advantages by critical_step_weights (needs step_correct, outcome_correct).
    critical: bool = False
    first_error: float = 2.0  # first wrong step of a wrong rollout
    divergent: float = 1.5  # a step whose correctness differs within the group
    after_error: float = 0.5  # steps after the first error of a wrong rollout
    consensus: float = 0.5  # a step the whole group got right, or wrong
    # Per-token clamp of the final advantage to [-clamp, clamp]; <= 0: no clamp.
    clamp: float = 0.0
    # Added to the std in every normalization.
    eps: float = 1e-6

    def __post_init__(self):
        _check_choice("StepAdvantageConfig.mode", self.mode, ADVANTAGE_MODES)
        _check_choice("StepAdvantageConfig.scale", self.scale, SCALES)
        for name in ("first_error", "divergent", "after_error", "consensus", "eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"StepAdvantageConfig.{name} must be >= 0, "
                                 f"got {getattr(self, name)}")


@functools.partial(jax.jit, static_argnums=0)
def token_advantages(config: StepAdvantageConfig, *, rewards: jax.Array,
                     token_step_ids: jax.Array, loss_mask: jax.Array,
                     step_rewards: jax.Array | None = None, step_valid: jax.Array | None = None,
                     step_correct: jax.Array | None = None,
                     outcome_correct: jax.Array | None = None,
                     group_valid: jax.Array | None = None) -> jax.Array:
    """Per-token advantages for the update batch, composing the functions above.

    rewards: [B, G] outcome rewards; token_step_ids, loss_mask: [N, T] (N = B * G);
    step_rewards, step_valid: [B, G, S] (step modes); step_correct: [B, G, S] bool and
    outcome_correct: [B, G] bool (config.critical); group_valid: [B, G] bool or None
    (rows not in the batch: 0 everywhere, out of every statistic).
    mode 'outcome': group_advantages(rewards) on every token.
    step modes: step_weight * [critical weights *] step advantages on each step's tokens,
    plus outcome_weight * group_advantages(rewards) on every token.
    Then the clamp; 0 where loss_mask is False. Returns [N, T] float32.
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    b, g = rewards.shape
    if token_step_ids.ndim != 2 or token_step_ids.shape[0] != b * g:
        raise ValueError(f"token_step_ids must be [N = B * G = {b * g}, T], got shape "
                         f"{tuple(token_step_ids.shape)}")
    _check_shape("loss_mask", loss_mask, token_step_ids.shape)
    if group_valid is None:
        group_valid = jnp.ones((b, g), bool)
    group_valid = group_valid.astype(bool)
    outcome = group_advantages(rewards, scale=config.scale, eps=config.eps, valid=group_valid)
    if config.mode == "outcome":
        advantages = jnp.broadcast_to(outcome.reshape(b * g, 1), token_step_ids.shape)
    else:
        if step_rewards is None or step_valid is None:
            raise ValueError(f"mode {config.mode!r} needs step_rewards and step_valid")
        valid = step_valid.astype(bool) & group_valid[..., None]
        steps = step_group_advantages(step_rewards, valid, mode=config.mode,
                                      scale=config.scale, eps=config.eps)
        if config.critical:
            if step_correct is None or outcome_correct is None:
                raise ValueError("critical weights need step_correct and outcome_correct")
            steps = steps * critical_step_weights(
                step_correct, valid, outcome_correct, first_error=config.first_error,
                divergent=config.divergent, after_error=config.after_error,
                consensus=config.consensus)
        advantages = step_to_token_advantages(
            config.step_weight * steps, token_step_ids, outcome_adv=outcome,
            outcome_weight=config.outcome_weight)
        advantages = jnp.where(group_valid.reshape(b * g, 1), advantages, 0.0)
    advantages = clamp_advantages(advantages, config.clamp)
    return jnp.where(loss_mask.astype(bool), advantages, 0.0)
