"""Advantages: every option on hand-computed cases, and a numpy loop reference on random ones."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from she_jax.rl import advantages as adv

SQRT2 = np.sqrt(2.0)


def assert_close(actual, expected, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, np.float32), atol=atol,
                               rtol=0)


# ------------------------------------------------------------------------ outcome (GRPO)


def test_group_advantages_std_and_mean_only():
    rewards = jnp.array([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    # Group 0: mean 0.5, population std 0.5 -> +-1. Group 1: all equal -> 0 (not 0/0).
    assert_close(adv.group_advantages(rewards), [[1, -1, -1, 1], [0, 0, 0, 0]])
    # Dr.GRPO: r - mean only.
    assert_close(adv.group_advantages(rewards, scale="none"),
                 [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0]])


def test_group_advantages_mean_scale_divides_by_the_success_rate():
    rewards = jnp.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, -0.5, 0.0, 0.0],
                         [1.0, -0.5, 1.0, 0.0]])
    # Group 0: success 1/4, mean 1/4 -> (r - 1/4) * 4: the one right answer +3, the rest -1
    # (std scaling would give +1.73 / -0.58). Group 1: success 3/4 -> (r - 3/4) / (3/4).
    # Group 2: no success (the penalty is not one): floored at 1 / 4 -> (r + 1/8) * 4.
    # Group 3: success 2/4 (-0.5 counts as 0), mean 3/8 -> (r - 3/8) * 2.
    assert_close(adv.group_advantages(rewards, scale="mean"),
                 [[3, -1, -1, -1], [1 / 3, 1 / 3, 1 / 3, -1], [0.5, -1.5, 0.5, 0.5],
                  [1.25, -1.75, 1.25, -0.75]])
    # Statistics over the valid rows only: {1, 0} -> success 1/2 -> +-1; invalid rows 0.
    valid = jnp.array([[True, True, False, False]] * 4)
    assert_close(adv.group_advantages(rewards[:1], scale="mean", valid=valid[:1]),
                 [[1, -1, 0, 0]])


def test_group_advantages_use_population_std_over_valid_rows():
    rewards = jnp.array([[1.0, 3.0, 99.0, 99.0], [5.0, 7.0, 7.0, 7.0]])
    valid = jnp.array([[True, True, False, False], [True, False, False, False]])
    # Group 0: valid {1, 3}: mean 2, population std 1 -> -1, +1 (the unbiased std sqrt(2)
    # would give -+0.707); the 99s are out of the statistics and get 0.
    # Group 1: one valid row -> 0.
    assert_close(adv.group_advantages(rewards, valid=valid), [[-1, 1, 0, 0], [0, 0, 0, 0]])
    assert_close(adv.group_advantages(rewards, valid=valid, scale="none"),
                 [[-1, 1, 0, 0], [0, 0, 0, 0]])


def test_sequence_to_token_and_clamp():
    mask = jnp.array([[True, True, False], [False, True, True]])
    assert_close(adv.sequence_to_token(jnp.array([1.5, -2.0]), mask),
                 [[1.5, 1.5, 0], [0, -2, -2]])
    values = jnp.array([-3.0, -1.0, 0.5, 2.5])
    assert_close(adv.clamp_advantages(values, 2.0), [-2, -1, 0.5, 2])
    assert_close(adv.clamp_advantages(values, 0.0), values)  # <= 0 disables
    assert_close(adv.clamp_advantages(values, -1.0), values)


# ---------------------------------------------------------------------------- step level

# One group (B=1) of G=4 rollouts and S=3 steps.
PER_STEP_REWARDS = jnp.array([[[1.0, 0.0, 5.0],
                               [0.0, 0.0, 7.0],
                               [1.0, 1.0, 9.0],
                               [0.0, 1.0, 9.0]]])
PER_STEP_VALID = jnp.array([[[True, True, True],
                             [True, True, False],
                             [True, False, False],
                             [True, True, False]]])


def test_per_step_advantages():
    # Step 0: all valid, {1, 0, 1, 0}: mean 0.5, std 0.5 -> +-1.
    # Step 1: valid g0, g1, g3 = {0, 0, 1}: mean 1/3, std sqrt(2)/3 -> -1/sqrt2, -1/sqrt2,
    #   sqrt2; g2 invalid -> 0.
    # Step 2: only g0 valid (< 2 entries) -> 0 everywhere.
    expected = [[[1, -1 / SQRT2, 0],
                 [-1, -1 / SQRT2, 0],
                 [1, 0, 0],
                 [-1, SQRT2, 0]]]
    assert_close(adv.step_group_advantages(PER_STEP_REWARDS, PER_STEP_VALID, mode="per_step"),
                 expected)
    # Mean-centring only: step 1 -> 0 - 1/3, 0 - 1/3, 1 - 1/3.
    expected_none = [[[0.5, -1 / 3, 0], [-0.5, -1 / 3, 0], [0.5, 0, 0], [-0.5, 2 / 3, 0]]]
    assert_close(adv.step_group_advantages(PER_STEP_REWARDS, PER_STEP_VALID, mode="per_step",
                                           scale="none"), expected_none)


def test_process_advantages_sum_normalized_rewards_of_own_and_later_steps():
    # Group 0 (G=2, S=3): valid rewards {2, -2, -2, 2}: mean 0, std 2 -> normalized
    #   g0 [1, (invalid) 0, -1], g1 [-1, 1, (invalid) 0].
    # Future sums: g0 [1 + 0 - 1, 0 - 1, -1] = [0, -1, -1]; g1 [-1 + 1, 1, 0] = [0, 1, 0].
    # The invalid step 1 of g0 still gets the sum of the later valid steps (-1).
    # Group 1: a single valid step reward -> 0 everywhere.
    rewards = jnp.array([[[2.0, 7.0, -2.0], [-2.0, 2.0, 5.0]],
                         [[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    valid = jnp.array([[[True, False, True], [True, True, False]],
                       [[True, False, False], [False, False, False]]])
    assert_close(adv.step_group_advantages(rewards, valid, mode="process"),
                 [[[0, -1, -1], [0, 1, 0]], [[0, 0, 0], [0, 0, 0]]])
    # Without the std the normalized rewards are +-2: sums double.
    assert_close(adv.step_group_advantages(rewards, valid, mode="process", scale="none"),
                 [[[0, -2, -2], [0, 2, 0]], [[0, 0, 0], [0, 0, 0]]])


WEIGHTS = dict(first_error=2.0, divergent=1.5, after_error=0.25, consensus=0.5)


def test_critical_step_weights_categories_and_overlaps():
    T, F = True, False
    step_correct = jnp.array([
        # Group 0.
        [[T, T, T, T],   # g0, outcome right
         [T, F, F, T],   # g1, outcome wrong: first error at step 1
         [F, T, T, F]],  # g2, outcome wrong, steps 2-3 invalid: first error at step 0
        # Group 1.
        [[F, T, T, F],   # g0, outcome RIGHT: its wrong step 0 is no "first error"
         [F, T, F, T],   # g1, outcome wrong: first error at step 0
         [T, T, T, T]],  # g2, entirely invalid
    ])
    step_valid = jnp.array([
        [[T, T, T, T], [T, T, T, T], [T, T, F, F]],
        [[T, T, T, F], [T, T, T, T], [F, F, F, F]],
    ])
    outcome_correct = jnp.array([[T, F, F], [T, F, F]])
    # Group 0, per step over valid entries: s0 {T, T, F} divergent; s1 {T, F, T} divergent;
    #   s2 {T, F} divergent; s3 {T, T} consensus.
    #   g0: [1.5, 1.5, 1.5, consensus 0.5]
    #   g1: s0 divergent 1.5; s1 first error + divergent -> max(2, 1.5) = 2;
    #       s2 after error + divergent -> up-weight wins: 1.5;
    #       s3 after error + consensus -> min(0.25, 0.5) = 0.25
    #   g2: s0 first error + divergent -> 2; s1 after error + divergent -> 1.5; invalid -> 1
    # Group 1: s0 {F, F} consensus (all wrong); s1 {T, T} consensus; s2 {T, F} divergent;
    #   s3 only g1 valid: no comparison, neither category.
    #   g0: [0.5, 0.5, 1.5, invalid 1]
    #   g1: s0 first error + consensus -> up wins: 2; s1 after + consensus -> 0.25;
    #       s2 after + divergent -> 1.5; s3 after error only -> 0.25
    #   g2: invalid -> 1
    expected = [[[1.5, 1.5, 1.5, 0.5], [1.5, 2, 1.5, 0.25], [2, 1.5, 1, 1]],
                [[0.5, 0.5, 1.5, 1], [2, 0.25, 1.5, 0.25], [1, 1, 1, 1]]]
    weights = adv.critical_step_weights(step_correct, step_valid, outcome_correct, **WEIGHTS)
    assert_close(weights, expected)
    # Defaults (after_error = consensus = 0.5): the after + consensus step takes 0.5.
    defaults = adv.critical_step_weights(step_correct, step_valid, outcome_correct)
    assert float(defaults[0, 1, 3]) == 0.5 and float(defaults[0, 1, 1]) == 2.0


def test_step_to_token_advantages():
    step_adv = jnp.array([[[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]]])  # B=1, G=2, S=3
    ids = jnp.array([[-1, 0, 0, 1, 5, 2], [5, 2, 1, -1, 0, 0]], jnp.int32)
    # Row 0: outcome term 0.5 * 10 = 5 on every token, + the step's advantage on step tokens;
    # row 1: 0.5 * 20 = 10. Label (5) and none (-1) tokens: the outcome term only.
    assert_close(adv.step_to_token_advantages(step_adv, ids, outcome_adv=jnp.array(
        [[10.0, 20.0]]), outcome_weight=0.5), [[5, 6, 6, 7, 5, 8], [10, 7, 8, 10, 9, 9]])
    assert_close(adv.step_to_token_advantages(step_adv, ids),
                 [[0, 1, 1, 2, 0, 3], [0, -3, -2, 0, -1, -1]])


# -------------------------------------------------------------------- the composed entry

T_, F_ = True, False
# B=1, G=2, S=5. g0 is right, g1 wrong (outcome advantages +1, -1).
HAND = dict(
    rewards=jnp.array([[1.0, 0.0]]),
    step_rewards=jnp.array([[[1.0, 1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0, 0.0]]]),
    step_valid=jnp.array([[[T_, T_, T_, T_, T_], [T_, T_, T_, T_, F_]]]),
    step_correct=jnp.array([[[T_, T_, F_, T_, T_], [T_, F_, T_, F_, F_]]]),
    outcome_correct=jnp.array([[T_, F_]]),
    token_step_ids=jnp.array([[5, 0, 1, 1, 2, 3, 4, -1], [5, 0, 1, 2, 3, 3, -1, -1]], jnp.int32),
    loss_mask=jnp.array([[T_] * 7 + [F_], [T_] * 6 + [F_, F_]]),
)
# per_step, G=2: a step whose two valid rewards differ gets +-1, equal rewards 0:
#   s0 equal -> 0; s1 [1, -1]; s2 [-1, 1]; s3 [1, -1]; s4 only g0 valid -> 0.
# Critical weights: s0 both right -> consensus 0.5; s1..s3 divergent 1.5; s4 one valid -> 1;
#   g1 (wrong) first error at s1 -> max(2, 1.5) = 2; s2, s3 after error but divergent -> 1.5.
# Weighted step advantages: g0 [0, 1.5, -1.5, 1.5, 0]; g1 [0, -2, 1.5, -1.5, 0].
# Tokens (outcome_weight 0.5: +0.5 on row 0, -0.5 on row 1), masked tail 0:
HAND_PER_STEP_CRITICAL = [[0.5, 0.5, 2.0, 2.0, -1.0, 2.0, 0.5, 0.0],
                          [-0.5, -0.5, -2.5, 1.0, -2.0, -2.0, 0.0, 0.0]]


def test_token_advantages_outcome_mode_is_plain_grpo():
    config = adv.StepAdvantageConfig(mode="outcome")
    out = adv.token_advantages(config, rewards=HAND["rewards"],
                               token_step_ids=HAND["token_step_ids"], loss_mask=HAND["loss_mask"])
    assert_close(out, [[1] * 7 + [0], [-1] * 6 + [0, 0]])


def test_token_advantages_per_step_critical_and_clamp():
    config = adv.StepAdvantageConfig(mode="per_step", critical=True, outcome_weight=0.5,
                                     **WEIGHTS)
    assert_close(adv.token_advantages(config, **HAND), HAND_PER_STEP_CRITICAL)
    clamped = adv.StepAdvantageConfig(mode="per_step", critical=True, outcome_weight=0.5,
                                      clamp=1.6, **WEIGHTS)
    assert_close(adv.token_advantages(clamped, **HAND),
                 np.clip(HAND_PER_STEP_CRITICAL, -1.6, 1.6))
    # Without critical weights, step_weight 2: g0 steps [0, 2, -2, 2, 0], g1 [0, -2, 2, -2, 0].
    plain = adv.StepAdvantageConfig(mode="per_step", step_weight=2.0, outcome_weight=0.5)
    assert_close(adv.token_advantages(plain, **HAND),
                 [[0.5, 0.5, 2.5, 2.5, -1.5, 2.5, 0.5, 0.0],
                  [-0.5, -0.5, -2.5, 1.5, -2.5, -2.5, 0.0, 0.0]])


def test_token_advantages_group_valid_zeroes_rows_and_leaves_statistics():
    group_valid = jnp.array([[True, False]])
    # With g1 out of the batch, g0 is alone in its group: per-step and outcome statistics
    # have < 2 entries -> 0 everywhere; g1's row -> 0.
    per_step = adv.StepAdvantageConfig(mode="per_step")
    assert_close(adv.token_advantages(per_step, **HAND, group_valid=group_valid), np.zeros((2, 8)))
    # 'process' pools g0's 5 step rewards [1, 1, 0, 1, 1]: mean 0.8, std 0.4 -> normalized
    # [0.5, 0.5, -2, 0.5, 0.5]; future sums [0, -0.5, -1, 1, 0.5]; outcome term 0.
    process = adv.StepAdvantageConfig(mode="process")
    assert_close(adv.token_advantages(process, **HAND, group_valid=group_valid),
                 [[0, 0, -0.5, -0.5, -1, 1, 0.5, 0], [0] * 8])


# --------------------------------------------------------- numpy loop reference, random


def _np_normalize(values, valid, scale, eps):
    if valid.sum() == 0:
        return np.zeros_like(values)
    kept = values[valid]
    out = values - kept.mean()
    if scale == "std":
        out = out / (kept.std() + eps)  # numpy's default std is the population std
    elif scale == "mean":
        out = out / max(np.clip(kept, 0.0, 1.0).mean(), 1.0 / len(kept))
    return np.where(valid, out, 0.0)


def _np_critical(correct, valid, outcome_correct, c):
    b, g, s = correct.shape
    weights = np.ones((b, g, s))
    for i, j, k in itertools.product(range(b), range(g), range(s)):
        if not valid[i, j, k]:
            continue
        wrong_steps = [k2 for k2 in range(s) if valid[i, j, k2] and not correct[i, j, k2]]
        first = wrong_steps[0] if wrong_steps else s
        column = [correct[i, j2, k] for j2 in range(g) if valid[i, j2, k]]
        ups, downs = [], []
        if not outcome_correct[i, j] and k == first:
            ups.append(c.first_error)
        if any(column) and not all(column):
            ups.append(c.divergent)
        if not outcome_correct[i, j] and k > first:
            downs.append(c.after_error)
        if len(column) >= 2 and (all(column) or not any(column)):
            downs.append(c.consensus)
        weights[i, j, k] = max(ups) if ups else min(downs) if downs else 1.0
    return weights


def _np_token_advantages(c, rewards, step_rewards, step_valid, step_correct, outcome_correct,
                         group_valid, token_step_ids, loss_mask):
    b, g, s = step_rewards.shape
    outcome = np.stack([_np_normalize(rewards[i], group_valid[i], c.scale, c.eps)
                        for i in range(b)])
    valid = step_valid & group_valid[..., None]
    steps = np.zeros((b, g, s))
    for i in range(b):
        if c.mode == "per_step":
            for k in range(s):
                if valid[i, :, k].sum() >= 2:
                    steps[i, :, k] = _np_normalize(step_rewards[i, :, k], valid[i, :, k],
                                                   c.scale, c.eps)
        elif c.mode == "process" and valid[i].sum() >= 2:
            normalized = _np_normalize(step_rewards[i], valid[i], c.scale, c.eps)
            for k in range(s):
                steps[i, :, k] = normalized[:, k:].sum(axis=1)
    if c.critical:
        steps = steps * _np_critical(step_correct, valid, outcome_correct, c)
    out = np.zeros(token_step_ids.shape)
    for n, t in itertools.product(range(b * g), range(token_step_ids.shape[1])):
        i, j = divmod(n, g)
        if c.mode == "outcome":
            value = outcome[i, j]
        else:
            step = token_step_ids[n, t]
            value = c.outcome_weight * outcome[i, j]
            if 0 <= step < s:
                value += c.step_weight * steps[i, j, step]
            value *= group_valid[i, j]
        if c.clamp > 0:
            value = np.clip(value, -c.clamp, c.clamp)
        out[n, t] = value * loss_mask[n, t]
    return out


@pytest.mark.parametrize("config", [
    adv.StepAdvantageConfig(mode="outcome", scale="none"),
    adv.StepAdvantageConfig(mode="per_step", critical=True, outcome_weight=0.5, clamp=1.5),
    adv.StepAdvantageConfig(mode="process", critical=True, scale="none", step_weight=0.7),
    adv.StepAdvantageConfig(mode="process", outcome_weight=0.0),
    adv.StepAdvantageConfig(mode="per_step", scale="mean", step_weight=0.5),
    adv.StepAdvantageConfig(mode="outcome", scale="mean"),
], ids=["outcome", "per_step_critical", "process_critical_none", "process", "per_step_mean",
        "outcome_mean"])
def test_token_advantages_match_numpy_reference(config):
    rng = np.random.default_rng(0)
    b, g, s, t = 3, 6, 5, 12
    inputs = dict(
        # Rewards on a coarse grid, so ties (equal rewards in a group) occur.
        rewards=rng.integers(0, 4, (b, g)).astype(np.float32),
        step_rewards=rng.integers(0, 3, (b, g, s)).astype(np.float32) / 2,
        step_valid=rng.random((b, g, s)) < 0.75,
        step_correct=rng.random((b, g, s)) < 0.5,
        outcome_correct=rng.random((b, g)) < 0.5,
        group_valid=rng.random((b, g)) < 0.85,
        token_step_ids=rng.integers(-1, 6, (b * g, t)).astype(np.int32),
        loss_mask=rng.random((b * g, t)) < 0.8,
    )
    expected = _np_token_advantages(config, **inputs)
    actual = adv.token_advantages(config, **{k: jnp.asarray(v) for k, v in inputs.items()})
    assert_close(actual, expected, atol=1e-4)
    assert np.count_nonzero(expected) > (b * g * t) // 3  # the case is not trivially zero


# --------------------------------------------------------------------------------- errors


def test_invalid_options_and_shapes_raise():
    rewards = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="scale"):
        adv.group_advantages(rewards, scale="max")
    with pytest.raises(ValueError, match="valid"):
        adv.group_advantages(rewards, valid=jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="loss_mask"):
        adv.sequence_to_token(jnp.zeros(3), jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="mode"):
        adv.step_group_advantages(jnp.zeros((1, 2, 5)), jnp.ones((1, 2, 5), bool), mode="sum")
    with pytest.raises(ValueError, match="step_valid"):
        adv.step_group_advantages(jnp.zeros((1, 2, 5)), jnp.ones((1, 2, 4), bool))
    with pytest.raises(ValueError, match="first_error"):
        adv.critical_step_weights(jnp.ones((1, 2, 5), bool), jnp.ones((1, 2, 5), bool),
                                  jnp.ones((1, 2), bool), first_error=-1.0)
    with pytest.raises(ValueError, match="outcome_correct"):
        adv.critical_step_weights(jnp.ones((1, 2, 5), bool), jnp.ones((1, 2, 5), bool),
                                  jnp.ones((2, 1), bool))
    with pytest.raises(ValueError, match="token_step_ids"):
        adv.step_to_token_advantages(jnp.zeros((1, 2, 5)), jnp.zeros((3, 4), jnp.int32))
    with pytest.raises(ValueError, match="StepAdvantageConfig.mode"):
        adv.StepAdvantageConfig(mode="steps")
    with pytest.raises(ValueError, match="StepAdvantageConfig.scale"):
        adv.StepAdvantageConfig(scale="mad")
    with pytest.raises(ValueError, match="StepAdvantageConfig.consensus"):
        adv.StepAdvantageConfig(consensus=-0.5)
    step_only = {k: HAND[k] for k in ("rewards", "token_step_ids", "loss_mask")}
    with pytest.raises(ValueError, match="step_rewards and step_valid"):
        adv.token_advantages(adv.StepAdvantageConfig(mode="per_step"), **step_only)
    no_correctness = {k: v for k, v in HAND.items() if k != "step_correct"}
    with pytest.raises(ValueError, match="step_correct and outcome_correct"):
        adv.token_advantages(adv.StepAdvantageConfig(mode="per_step", critical=True),
                             **no_correctness)
    with pytest.raises(ValueError, match="token_step_ids"):
        adv.token_advantages(adv.StepAdvantageConfig(), rewards=jnp.zeros((2, 2)),
                             token_step_ids=HAND["token_step_ids"], loss_mask=HAND["loss_mask"])
