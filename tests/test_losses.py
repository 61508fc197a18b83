"""Policy and DPO losses: hand-computed values, gradients, and invariance of the train step
to micro-batching, aggregation choice and sharding."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from she_jax import models, parallel
from she_jax.rl import advantages as adv
from she_jax.rl import losses
from she_jax.train import loop
from she_jax.train import rl as rl_lib
from she_jax.train.config import DEFAULT_AXIS_RULES
from she_jax.train.state import create_train_state, state_sharding

LN2 = math.log(2.0)


def per_token_loss(logp, old_logp, advantages, **options):
    """policy_loss of each token on its own (vmapped over [K] tokens): [K] per-token losses."""

    def one(lp, olp, a):
        loss_sum, _ = losses.policy_loss(lp[None, None], olp[None, None], a[None, None],
                                         jnp.ones((1, 1), bool), **options)
        return loss_sum

    return jax.vmap(one)(jnp.asarray(logp, jnp.float32), jnp.asarray(old_logp, jnp.float32),
                         jnp.asarray(advantages, jnp.float32))


def ratio_pair(ratio):
    """(logp, old_logp) whose ratio exp(logp - old_logp) is `ratio`."""
    return math.log(ratio) - 1.0, -1.0


# ------------------------------------------------------------------------ the PPO term


def test_ratio_one_gives_minus_advantage():
    a = [1.5, -2.0, 0.0, 0.25]
    np.testing.assert_allclose(per_token_loss([-0.7] * 4, [-0.7] * 4, a), [-1.5, 2.0, 0.0, -0.25],
                               atol=1e-7)


# (ratio, A) -> loss with eps_low 0.2, eps_high 0.28 (clip range [0.8, 1.28]):
CLIP_CASES = [
    (2.0, 1.0, -1.28, True),    # A > 0, r above 1.28: min(2, 1.28) -> clipped
    (0.5, 1.0, -0.5, False),    # A > 0, r small: min(0.5, 0.8) = the unclipped term
    (0.5, -1.0, 0.8, True),     # A < 0, r below 0.8: min(-0.5, -0.8) -> clipped
    (2.0, -1.0, 2.0, False),    # A < 0, r large: min(-2, -1.28) = unclipped (no cap)
    (1.25, 2.0, -2.5, False),   # clip-higher: 1.25 < 1.28, not clipped (a symmetric 0.2 would)
    (0.75, -2.0, 1.6, True),    # A < 0, r 0.75 < 0.8: min(-1.5, -1.6) -> clipped, loss 1.6
    (1.0, 0.0, 0.0, False),     # A = 0: never clipped
]


def test_clip_higher_is_asymmetric_and_clip_fraction_is_exact():
    pairs = [ratio_pair(r) for r, *_ in CLIP_CASES]
    logp, old = np.array(pairs, np.float32).T
    a = np.array([c[1] for c in CLIP_CASES], np.float32)
    expected = [c[2] for c in CLIP_CASES]
    np.testing.assert_allclose(per_token_loss(logp, old, a), expected, atol=1e-5)
    loss_sum, aux = losses.policy_loss(logp[None], old[None], a[None], jnp.ones((1, 7), bool))
    assert float(loss_sum) == pytest.approx(sum(expected), abs=1e-5)
    assert float(aux["normalizer"]) == 7
    clipped, count = aux["clip_fraction"]
    assert (float(clipped), float(count)) == (3.0, 7.0)  # cases 1, 3 and 6
    assert float(aux["ratio_max"]) == pytest.approx(2.0, rel=1e-6)
    assert float(aux["ratio_min"]) == pytest.approx(0.5, rel=1e-6)
    ratio_sum, _ = aux["ratio_mean"]
    assert float(ratio_sum) == pytest.approx(2 + 0.5 + 0.5 + 2 + 1.25 + 0.75 + 1, rel=1e-6)
    pg_sum, _ = aux["pg_loss"]
    assert float(pg_sum) == pytest.approx(sum(expected), abs=1e-5)
    # A symmetric clip (eps_high 0.2) clips case 5 too: loss -1.2 * 2 = -2.4.
    symmetric = per_token_loss(logp[4:5], old[4:5], a[4:5], eps_high=0.2)
    np.testing.assert_allclose(symmetric, [-2.4], atol=1e-5)


def test_kl_k3_and_entropy_terms():
    # ref - logp = ln 2: k3 = 2 - ln 2 - 1 = 1 - ln 2; with A = 0 only the KL term is left.
    logp = jnp.array([[math.log(0.25), -1.0]])
    ref = jnp.array([[math.log(0.5), -1.0]])  # second token: ref == logp -> k3 = 0
    zeros = jnp.zeros((1, 2))
    mask = jnp.ones((1, 2), bool)
    loss_sum, aux = losses.policy_loss(logp, logp, zeros, mask, ref_logp=ref, kl_beta=0.5)
    assert float(loss_sum) == pytest.approx(0.5 * (1 - LN2), rel=1e-6)
    kl_sum, kl_count = aux["kl"]
    assert (float(kl_sum), float(kl_count)) == pytest.approx((1 - LN2, 2.0), rel=1e-6)
    # kl_beta = 0: the KL is still reported, but not in the loss.
    loss_sum, aux = losses.policy_loss(logp, logp, zeros, mask, ref_logp=ref)
    assert float(loss_sum) == 0.0 and float(aux["kl"][0]) == pytest.approx(1 - LN2, rel=1e-6)
    # Entropy regularization is a bonus: it lowers the loss, -coef * H per token.
    entropy = jnp.array([[2.0, 1.0]])
    loss_sum, aux = losses.policy_loss(logp, logp, zeros, mask, entropy=entropy,
                                       entropy_coef=0.1)
    assert float(loss_sum) == pytest.approx(-0.1 * (2.0 + 1.0), rel=1e-6)
    assert tuple(map(float, aux["entropy"])) == (3.0, 2.0)


def test_off_policy_tokens_use_shaped_probability_and_its_gradient():
    # p = 0.1, gamma = 0.1: f = 0.1 / 0.2 = 0.5; A = 2 -> pg = -1, whatever old_logp is.
    gamma, p, a = 0.1, 0.1, 2.0
    logp = jnp.array([[math.log(p), ratio_pair(2.0)[0]]])
    old = jnp.array([[50.0, ratio_pair(2.0)[1]]])  # token 0's old_logp is junk, ignored
    advantages = jnp.array([[a, 1.0]])
    mask = jnp.ones((1, 2), bool)
    off = jnp.array([[True, False]])

    def loss(lp):
        return losses.policy_loss(lp, old, advantages, mask, off_policy=off,
                                  off_policy_gamma=gamma)

    loss_sum, aux = loss(logp)
    assert float(loss_sum) == pytest.approx(-1.0 + -1.28, rel=1e-5)  # + the clipped token 1
    # d/dlogp of -f(p) A = -A * gamma * p / (p + gamma)^2 = -2 * 0.01 / 0.04 = -0.5.
    grad = jax.grad(lambda lp: loss(lp)[0])(logp)
    assert float(grad[0, 0]) == pytest.approx(-a * gamma * p / (p + gamma) ** 2, rel=1e-5)
    assert float(grad[0, 0]) == pytest.approx(-0.5, rel=1e-5)
    assert float(grad[0, 1]) == 0.0  # the clipped on-policy token has no gradient
    # Off-policy tokens are out of the ratio statistics (their "ratio" would be e^-52).
    assert float(aux["ratio_min"]) == pytest.approx(2.0, rel=1e-6)
    assert tuple(map(float, aux["ratio_mean"])) == pytest.approx((2.0, 1.0))
    assert tuple(map(float, aux["clip_fraction"])) == (1.0, 1.0)
    assert tuple(map(float, aux["off_policy_fraction"])) == (1.0, 2.0)
    # A per-sequence [N] flag means the same as flagging all its tokens.
    row_flag = losses.policy_loss(logp[:, :1], old[:, :1], advantages[:, :1], mask[:, :1],
                                  off_policy=jnp.array([True]), off_policy_gamma=gamma)[0]
    assert float(row_flag) == pytest.approx(-1.0, rel=1e-5)


def test_kl_is_taken_over_on_policy_tokens_only():
    # Token 0 is a guided gold token the policy finds unlikely (logp -20) and the reference
    # likely (-1): k3 there would be e^19 - 19 - 1 ~ 1.8e8. It must not enter the loss.
    logp = jnp.array([[-20.0, math.log(0.5)]])
    ref = jnp.array([[-1.0, math.log(0.25)]])
    zeros = jnp.zeros((1, 2))
    mask = jnp.ones((1, 2), bool)
    off = jnp.array([[True, False]])
    loss_sum, aux = losses.policy_loss(logp, logp, zeros, mask, ref_logp=ref, kl_beta=1.0,
                                       off_policy=off)
    # On-policy token 1: delta = ln(1/2), k3 = 1/2 - ln(1/2) - 1 = ln 2 - 1/2.
    expected_k3 = LN2 - 0.5
    assert tuple(map(float, aux["kl"])) == pytest.approx((expected_k3, 1.0), rel=1e-5)
    # The loss: gold token pg = -f(p) * 0 = 0, on-policy pg = 0, plus the on-policy k3.
    assert float(loss_sum) == pytest.approx(expected_k3, rel=1e-5)
    grad = jax.grad(lambda lp: losses.policy_loss(lp, logp, zeros, mask, ref_logp=ref,
                                                  kl_beta=1.0, off_policy=off)[0])(logp)
    assert float(grad[0, 0]) == 0.0 and np.isfinite(np.asarray(grad)).all()


# ---------------------------------------------------------------------- aggregation


def test_aggregations_on_a_ragged_batch():
    # ratio 1 -> per-token loss -A. Valid tokens: row 0 {-1, -2}, row 1 {-4}, row 2 none.
    a = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = jnp.array([[True, True, False], [True, False, False], [False, False, False]])
    logp = jnp.zeros((3, 3))

    def run(**options):
        loss_sum, aux = losses.policy_loss(logp, logp, a, mask, **options)
        return float(loss_sum), float(aux["normalizer"])

    assert run(aggregation="token_mean") == (-7.0, 3.0)  # mean -7/3
    assert run(aggregation="seq_mean_token_mean") == (-1.5 - 4.0, 2.0)  # mean -2.75
    assert run(aggregation="constant", constant_len=4) == (-7.0, 12.0)  # N * 4; mean -7/12


def test_masked_tokens_hold_junk_without_nan():
    # Padding with old_logp far below logp (ratio e^1e4 = inf if computed) and a junk ref.
    logp = jnp.array([[-1.0, -1.0]])
    old = jnp.array([[-1.0, -1e4]])
    ref = jnp.array([[-1.0, 1e4]])
    mask = jnp.array([[True, False]])

    def loss(lp):
        return losses.policy_loss(lp, old, jnp.ones((1, 2)), mask, ref_logp=ref, kl_beta=0.1)[0]

    value, grad = jax.value_and_grad(loss)(logp)
    assert float(value) == pytest.approx(-1.0)
    assert np.all(np.isfinite(np.asarray(grad))) and float(grad[0, 1]) == 0.0


def test_no_valid_token_gives_zero_loss_and_neutral_extremes():
    loss_sum, aux = losses.policy_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones((2, 3)),
                                       jnp.zeros((2, 3), bool), aggregation="seq_mean_token_mean")
    assert float(loss_sum) == 0.0 and float(aux["normalizer"]) == 0.0
    # Finite (the loop stops on non-finite metrics) and neutral under max / min.
    assert float(aux["ratio_max"]) == 0.0
    assert float(aux["ratio_min"]) == float(np.finfo(np.float32).max)


def test_sequence_logprob_sums():
    logp = jnp.array([[-1.0, -2.0, -4.0], [-0.5, -8.0, -0.25]])
    mask = jnp.array([[True, True, False], [True, False, True]])
    np.testing.assert_allclose(losses.sequence_logprob_sums(logp, mask), [-3.0, -0.75])


def test_invalid_options_raise():
    x = jnp.zeros((2, 3))
    mask = jnp.ones((2, 3), bool)
    with pytest.raises(ValueError, match="aggregation"):
        losses.policy_loss(x, x, x, mask, aggregation="sum")
    with pytest.raises(ValueError, match="constant_len"):
        losses.policy_loss(x, x, x, mask, aggregation="constant")
    with pytest.raises(ValueError, match="ref_logp"):
        losses.policy_loss(x, x, x, mask, kl_beta=0.1)
    with pytest.raises(ValueError, match="entropy"):
        losses.policy_loss(x, x, x, mask, entropy_coef=0.1)
    with pytest.raises(ValueError, match="advantages"):
        losses.policy_loss(x, x, jnp.zeros((2, 4)), mask)
    with pytest.raises(ValueError, match="off_policy"):
        losses.policy_loss(x, x, x, mask, off_policy=jnp.zeros((3,), bool))
    with pytest.raises(ValueError, match="off_policy_gamma"):
        losses.policy_loss(x, x, x, mask, off_policy_gamma=0.0)
    with pytest.raises(ValueError, match="PolicyLossConfig.aggregation"):
        losses.PolicyLossConfig(aggregation="seq_mean")
    with pytest.raises(ValueError, match="constant_len"):
        losses.PolicyLossConfig(aggregation="constant")
    with pytest.raises(ValueError, match="PolicyLossConfig.kl_beta"):
        losses.PolicyLossConfig(kl_beta=-1.0)
    with pytest.raises(ValueError, match="beta"):
        losses.dpo_loss(x[0], x[0], x[0], x[0], beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.dpo_loss(x[0], x[0], x[0], x[0], label_smoothing=0.7)
    fn = losses.make_policy_loss_fn(MODEL, losses.PolicyLossConfig(kl_beta=0.1))
    batch = {"tokens": jnp.zeros((2, 4), jnp.int32), "attention_mask": jnp.ones((2, 4), bool),
             "loss_mask": mask, "old_logprobs": x, "advantages": x}
    with pytest.raises(ValueError, match="ref_logprobs"):
        fn(None, batch, None)
    with pytest.raises(ValueError, match="advantages"):
        fn(None, {k: v for k, v in batch.items() if k != "advantages"}, None)


# ------------------------------------------------------------------------------- DPO


def test_dpo_loss_hand_values_smoothing_and_metrics():
    # beta 0.5. Pair 0: chosen - ref = 3, rejected - ref = 1 -> h = 2, beta h = 1:
    #   loss -log sigmoid(1) = log(1 + e^-1). Pair 1: chosen - ref = 0, rejected - ref = 1
    #   -> h = -1, beta h = -0.5: loss log(1 + e^0.5). Pair 2: masked out (junk).
    chosen = jnp.array([-2.0, -5.0, 100.0])
    rejected = jnp.array([-4.0, -6.0, -100.0])
    ref_chosen = jnp.array([-5.0, -5.0, 0.0])
    ref_rejected = jnp.array([-5.0, -7.0, 0.0])
    pair_mask = jnp.array([True, True, False])
    loss_sum, aux = losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5,
                                    pair_mask=pair_mask)
    assert float(loss_sum) == pytest.approx(math.log1p(math.exp(-1)) + math.log1p(math.exp(0.5)),
                                            rel=1e-6)
    assert float(aux["normalizer"]) == 2.0
    expected_metrics = {
        "reward_margin": (1.0 - 0.5, 2), "chosen_reward": (1.5 + 0.0, 2),
        "rejected_reward": (0.5 + 0.5, 2), "chosen_logp": (-7.0, 2), "rejected_logp": (-10.0, 2),
        "reward_accuracy": (1.0, 2)}
    for name, (total, count) in expected_metrics.items():
        assert tuple(map(float, aux[name])) == pytest.approx((total, count)), name
    # Label smoothing 0.1 on pair 0: 0.9 * -log s(1) + 0.1 * -log s(-1).
    smoothed, _ = losses.dpo_loss(chosen[:1], rejected[:1], ref_chosen[:1], ref_rejected[:1],
                                  beta=0.5, label_smoothing=0.1)
    assert float(smoothed) == pytest.approx(
        0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1)), rel=1e-6)


# ----------------------------------------------------------------- model and train step

MODEL = models.ModelConfig.preset("tiny", vocab_size=64, num_layers=1, hidden_size=32,
                                  num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
B, G, T = 2, 4, 10  # N = 8 rows of 10 tokens, 9 targets


@functools.cache
def params_on_host():
    # Random values of the param shapes: no compile of the model's init.
    shapes = jax.eval_shape(functools.partial(models.init_params, MODEL), jax.random.key(0))
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: np.ones(s.shape, np.float32) if path[-1].key == "scale"
        else rng.normal(0.0, 0.3, s.shape).astype(np.float32), shapes)


@functools.cache
def rl_batch():
    """A ragged update batch: left-padded prompts, completions of different lengths, rows
    3 and 7 without any completion token (so with accum_steps 4 the micro-batch of rows
    {3, 7} has no valid token), old/ref log-probs near the current ones, a guided gold row
    (off-policy), and per-step SRPO token advantages with critical weights."""
    rng = np.random.default_rng(1)
    n = B * G
    prompt_len = np.array([3, 4, 2, 3, 4, 3, 2, 4])
    completion_len = np.array([5, 2, 7, 0, 6, 3, 4, 0])
    pad_left = 5 - prompt_len
    positions = np.arange(T)
    attention = ((positions >= pad_left[:, None])
                 & (positions < (pad_left + prompt_len + completion_len)[:, None]))
    tokens = np.where(attention, rng.integers(1, MODEL.vocab_size, (n, T)), 0).astype(np.int32)
    targets = positions[1:]  # target j is token j + 1
    loss_mask = (targets >= 5) & (targets < (5 + completion_len)[:, None])
    step_ids = np.where(loss_mask, rng.integers(-1, 6, (n, T - 1)), -1).astype(np.int32)
    logp, _ = losses.token_logprobs(MODEL, params_on_host(), tokens, attention,
                                    with_entropy=True)
    logp = np.asarray(logp)
    config = adv.StepAdvantageConfig(mode="per_step", critical=True, outcome_weight=0.5)
    advantages = adv.token_advantages(
        config, rewards=jnp.asarray(rng.integers(0, 3, (B, G)), jnp.float32),
        token_step_ids=step_ids, loss_mask=loss_mask,
        step_rewards=jnp.asarray(rng.integers(0, 2, (B, G, 5)), jnp.float32),
        step_valid=jnp.asarray(rng.random((B, G, 5)) < 0.8),
        step_correct=jnp.asarray(rng.random((B, G, 5)) < 0.5),
        outcome_correct=jnp.asarray(rng.random((B, G)) < 0.5))
    assert np.count_nonzero(np.asarray(advantages)) > loss_mask.sum() // 2
    return {
        "tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask,
        "old_logprobs": np.where(loss_mask, logp + rng.normal(0, 0.3, logp.shape), 0.0
                                 ).astype(np.float32),
        "ref_logprobs": np.where(loss_mask, logp + rng.normal(0, 0.2, logp.shape), 0.0
                                 ).astype(np.float32),
        "advantages": np.asarray(advantages),
        "off_policy": np.arange(n) == 5,
        "token_step_ids": step_ids,  # not read by the loss: extra keys are fine
    }


def test_token_logprobs_match_log_softmax_of_forward():
    batch = rl_batch()
    params = params_on_host()
    logp, entropy = losses.token_logprobs(MODEL, params, batch["tokens"], batch["attention_mask"],
                                          with_entropy=True)
    logits = np.asarray(models.forward(MODEL, params, batch["tokens"], batch["attention_mask"]),
                        np.float64)[:, :-1]
    top = logits.max(-1, keepdims=True)
    log_probs = logits - top - np.log(np.sum(np.exp(logits - top), -1, keepdims=True))
    expected = np.take_along_axis(log_probs, batch["tokens"][:, 1:, None], -1)[..., 0]
    # Positions whose input and target are real tokens (a left-pad query sees no key, so
    # its logits are meaningless and depend on the sequence length).
    mask = batch["attention_mask"][:, :-1] & batch["attention_mask"][:, 1:]
    np.testing.assert_allclose(np.asarray(logp)[mask], expected[mask], atol=1e-5)
    expected_entropy = -np.sum(np.exp(log_probs) * log_probs, -1)
    np.testing.assert_allclose(np.asarray(entropy)[mask], expected_entropy[mask], atol=1e-5)
    assert entropy.dtype == jnp.float32 and 0.1 < float(entropy.mean()) < math.log(64)
    # Without entropy only the log-probs come back (shape-checked, no compile).
    shapes = jax.eval_shape(functools.partial(losses.token_logprobs, MODEL), params,
                            batch["tokens"], batch["attention_mask"])
    assert shapes[0].shape == (B * G, T - 1) and shapes[1] is None
    # Projecting only from a first target on gives the same values there, zeros before.
    first = 3
    logp_tail, entropy_tail = losses.token_logprobs(
        MODEL, params, batch["tokens"], batch["attention_mask"], with_entropy=True,
        first_target=first)
    assert logp_tail.shape == logp.shape
    # (float32: XLA fuses the shorter projection differently, ~1e-6 on values near 3.5)
    np.testing.assert_allclose(np.asarray(logp_tail)[:, first:], np.asarray(logp)[:, first:],
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(entropy_tail)[:, first:],
                               np.asarray(entropy)[:, first:], atol=1e-5)
    assert not np.asarray(logp_tail)[:, :first].any()
    with pytest.raises(ValueError, match="first_target"):
        losses.token_logprobs(MODEL, params, batch["tokens"], batch["attention_mask"],
                              first_target=T - 1)


OPTIONS = dict(eps_low=0.2, eps_high=0.28, kl_beta=0.05, entropy_coef=0.01)
AGGREGATION_OPTIONS = {
    "token_mean": losses.PolicyLossConfig(aggregation="token_mean", **OPTIONS),
    "seq_mean_token_mean": losses.PolicyLossConfig(aggregation="seq_mean_token_mean", **OPTIONS),
    "constant": losses.PolicyLossConfig(aggregation="constant", constant_len=T - 1, **OPTIONS),
}


def bigram_logprobs(model_config, params, tokens, attention_mask, *, with_entropy=False,
                    first_target=0, group_size=1, chunk=0):
    """A stand-in policy for `losses.token_logprobs`: next-token logits = a [V, V] table row
    of the current token. Same outputs and batch handling, a fraction of the transformer's
    compile time (the micro-batching test compiles 9 train steps)."""
    del model_config, attention_mask, chunk
    assert first_target == 0 and group_size == 1  # the options under test leave them be
    log_probs = jax.nn.log_softmax(params["table"][tokens[:, :-1]], axis=-1)
    logp = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, -1) if with_entropy else None
    return logp, entropy


@functools.cache
def bigram_params():
    return {"table": np.random.default_rng(2).normal(0, 0.5, (MODEL.vocab_size,) * 2
                                                     ).astype(np.float32)}


def one_step(loss_fn, params, accum_steps=1, mesh_sizes=None, batch=None):
    """(params, metrics) after one SGD step of `loss_fn` on `batch` (default rl_batch())
    from `params`."""
    tx = optax.sgd(0.1)  # the update is a multiple of the gradient: a normalizer error shows
    params = jax.tree.map(jnp.asarray, params)  # fresh arrays: the step donates its state
    if mesh_sizes is None:
        state = create_train_state(params, tx, jax.random.PRNGKey(0))
        step = loop.make_train_step(loss_fn, tx, accum_steps)
    else:
        mesh = parallel.make_mesh(mesh_sizes)
        params = parallel.shard_params(params, models.param_logical_axes(MODEL), mesh,
                                       DEFAULT_AXIS_RULES)
        state = create_train_state(params, tx, jax.random.PRNGKey(0))
        step = loop.make_train_step(loss_fn, tx, accum_steps, mesh=mesh,
                                    rules=DEFAULT_AXIS_RULES, state_sharding=state_sharding(state))
    state, metrics = step(state, rl_batch() if batch is None else batch)
    return jax.device_get(state.params), jax.device_get(metrics)


@functools.cache
def bigram_step(aggregation, accum_steps):
    # make_policy_loss_fn resolves token_logprobs when the step is traced (inside one_step);
    # the batch is built (with the real token_logprobs) before the patch.
    rl_batch()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(losses, "token_logprobs", bigram_logprobs)
        loss_fn = losses.make_policy_loss_fn(MODEL, AGGREGATION_OPTIONS[aggregation])
        return one_step(loss_fn, bigram_params(), accum_steps)


def assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.parametrize("aggregation", list(AGGREGATION_OPTIONS))
def test_update_and_metrics_do_not_depend_on_micro_batching(aggregation):
    params_1, metrics_1 = bigram_step(aggregation, 1)
    # Every term is active: clipping, KL, entropy, the off-policy row, both ratio extremes.
    assert metrics_1["clip_fraction"] > 0 and metrics_1["kl"] > 0 and metrics_1["entropy"] > 0
    assert metrics_1["off_policy_fraction"] > 0
    assert metrics_1["ratio_max"] > 1.28 and metrics_1["ratio_min"] < 0.8
    for accum_steps in (2, 4):  # with 4, the micro-batch of rows {3, 7} has no valid token
        params_a, metrics_a = bigram_step(aggregation, accum_steps)
        assert_trees_close(params_a, params_1, atol=1e-6)
        assert metrics_a.keys() == metrics_1.keys()
        for key in metrics_1:  # ratio_max / ratio_min included
            assert metrics_a[key] == pytest.approx(metrics_1[key], rel=1e-6, abs=1e-6), (
                accum_steps, key)


def test_aggregations_differ_on_a_ragged_batch():
    batch = rl_batch()
    metrics = {name: bigram_step(name, 1)[1] for name in AGGREGATION_OPTIONS}
    values = sorted(m["loss"] for m in metrics.values())
    assert min(np.diff(values)) > 1e-3, {k: m["loss"] for k, m in metrics.items()}
    # The normalizers: valid tokens, sequences with >= 1 valid token, N * (T - 1).
    assert {k: float(m["normalizer"]) for k, m in metrics.items()} == {
        "token_mean": batch["loss_mask"].sum(), "seq_mean_token_mean": 6.0, "constant": 72.0}


def test_sharded_micro_batched_step_matches_one_device():
    # The transformer policy with SRPO per-step advantages (critical weights), an entropy
    # bonus, KL and a gold row, on a data x fsdp x tensor mesh with 2 micro-batches.
    loss_fn = losses.make_policy_loss_fn(MODEL, AGGREGATION_OPTIONS["token_mean"])
    params_1, metrics_1 = one_step(loss_fn, params_on_host())
    params_s, metrics_s = one_step(loss_fn, params_on_host(), accum_steps=2,
                                   mesh_sizes={"data": 2, "fsdp": 2, "tensor": 2})
    assert metrics_1["clip_fraction"] > 0 and metrics_1["entropy"] > 0
    assert_trees_close(params_s, params_1, atol=1e-5)
    for key in metrics_1:
        assert metrics_s[key] == pytest.approx(metrics_1[key], rel=1e-5, abs=1e-5), key


PROMPT_LEN = 5  # rl_batch(): prompts are left-padded into positions 0..4


@functools.cache
def shared_prompt_batch():
    """rl_batch() laid out as a real RL batch: the G rows of a group share the group's
    first prompt (tokens and padding), completions stay ragged."""
    batch = dict(rl_batch())
    first = np.repeat(np.arange(B) * G, G)
    for key in ("tokens", "attention_mask"):
        value = batch[key].copy()
        value[:, :PROMPT_LEN] = value[first, :PROMPT_LEN]
        batch[key] = value
    return batch


def test_shared_prompt_forward_equals_the_row_by_row_forward():
    batch, params = shared_prompt_batch(), params_on_host()
    args = (MODEL, params, batch["tokens"], batch["attention_mask"])
    row_by_row = losses.token_logprobs(*args, with_entropy=True, first_target=PROMPT_LEN - 1)
    shared = losses.token_logprobs(*args, with_entropy=True, first_target=PROMPT_LEN - 1,
                                   group_size=G)
    real = batch["attention_mask"][:, :-1] & batch["attention_mask"][:, 1:]
    real[:, :PROMPT_LEN - 1] = False  # targets before first_target are returned as 0
    for ours, want in zip(shared, row_by_row, strict=True):
        np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(want)[real], atol=1e-5)
        assert not np.asarray(ours)[:, :PROMPT_LEN - 1].any()
    with pytest.raises(ValueError, match="whole groups"):
        losses.token_logprobs(*args, first_target=PROMPT_LEN - 1, group_size=3)


def test_shared_prompt_sharded_micro_batched_step_matches_row_by_row_one_device():
    """The update with group_size = G (prompts run once per group) on a data x fsdp x
    tensor mesh, 2 micro-batches of one whole group each, equals the row-by-row update on
    one device."""
    options = dict(aggregation="token_mean", first_target=PROMPT_LEN - 1, **OPTIONS)
    batch = shared_prompt_batch()
    params_1, metrics_1 = one_step(
        losses.make_policy_loss_fn(MODEL, losses.PolicyLossConfig(**options)),
        params_on_host(), batch=batch)
    order = rl_lib.group_micro_batch_order(B * G, G, 2)
    np.testing.assert_array_equal(order, [0, 4, 1, 5, 2, 6, 3, 7])
    params_s, metrics_s = one_step(
        losses.make_policy_loss_fn(MODEL, losses.PolicyLossConfig(group_size=G, **options)),
        params_on_host(), accum_steps=2, mesh_sizes={"data": 2, "fsdp": 2, "tensor": 2},
        batch={k: v[order] for k, v in batch.items()})
    assert metrics_1["clip_fraction"] > 0 and metrics_1["kl"] > 0
    assert_trees_close(params_s, params_1, atol=1e-5)
    for key in metrics_1:
        assert metrics_s[key] == pytest.approx(metrics_1[key], rel=1e-5, abs=1e-5), key


def test_shared_prompt_checks():
    tokens = shared_prompt_batch()["tokens"]
    rl_lib.check_shared_prompts(tokens, G, PROMPT_LEN)
    broken = tokens.copy()
    broken[6, 4] += 1
    with pytest.raises(ValueError, match=r"groups \[1\] do not share"):
        rl_lib.check_shared_prompts(broken, G, PROMPT_LEN)
    with pytest.raises(ValueError, match="not whole groups"):
        rl_lib.group_micro_batch_order(8, 4, 4)


def test_minibatches_and_micro_batches_hold_whole_groups():
    # 6 groups of 4, 2 passes of 3 minibatches, 2 micro-batches each: every micro-batch
    # that split_micro_batches makes of a part is one whole group, every row once per pass.
    parts = rl_lib.minibatch_rows(24, 4, num_iterations=2, num_minibatches=3, accum_steps=2,
                                  rng=np.random.default_rng(0))
    assert len(parts) == 6
    for i in range(2):
        np.testing.assert_array_equal(np.sort(np.concatenate(parts[3 * i:3 * i + 3])),
                                      np.arange(24))
    for part in parts:
        for micro in np.asarray(loop.split_micro_batches(jnp.asarray(part), 2)):
            assert len(set(micro // 4)) == 1 and sorted(micro % 4) == [0, 1, 2, 3], micro
    # The two passes shuffle differently; one minibatch keeps the batch order.
    assert not np.array_equal(np.concatenate(parts[:3]), np.concatenate(parts[3:]))
    plain = rl_lib.minibatch_rows(8, 1, 1, 1, 1, np.random.default_rng(0))
    np.testing.assert_array_equal(plain[0], np.arange(8))


# --------------------------------------------------- chunked vocabulary projection


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("first_target,group_size", [(0, 1), (PROMPT_LEN - 1, G)])
def test_chunked_logprobs_equal_the_unchunked_values_and_gradients(dtype, first_target,
                                                                   group_size):
    """Chunks of 2 positions (with a padded last chunk: 9 or 5 projected positions) give
    the log-probs, entropies and their parameter gradients of the one-piece projection."""
    model = MODEL if dtype == "float32" else dataclasses.replace(MODEL, dtype=dtype)
    batch, params = shared_prompt_batch(), params_on_host()
    weights = np.random.default_rng(3).normal(size=(2, B * G, T - 1)).astype(np.float32)

    def objective(params, chunk):
        logp, entropy = losses.token_logprobs(
            model, params, batch["tokens"], batch["attention_mask"], with_entropy=True,
            first_target=first_target, group_size=group_size, chunk=chunk)
        return jnp.sum(logp * weights[0] + entropy * weights[1]), (logp, entropy)

    results = {}
    for chunk in (0, 2):
        (_, outputs), grads = jax.jit(jax.value_and_grad(objective, has_aux=True),
                                      static_argnums=1)(params, chunk)
        results[chunk] = jax.device_get((outputs, grads))
    (outputs_0, grads_0), (outputs_2, grads_2) = results[0], results[2]
    for ours, want in zip(outputs_2, outputs_0, strict=True):
        np.testing.assert_allclose(ours, want, atol=2e-6, rtol=0)
    assert np.abs(outputs_0[1][:, first_target:]).min() > 0.1  # entropies are real values
    for (path, ours), want in zip(jax.tree_util.tree_leaves_with_path(grads_2),
                                  jax.tree.leaves(grads_0), strict=True):
        scale = np.abs(want).max()
        assert scale > 0, path  # every parameter gets a gradient
        np.testing.assert_allclose(ours, want, atol=2e-6 * scale, rtol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))


def test_chunked_loss_is_the_default_and_checked():
    assert losses.PolicyLossConfig().logprob_chunk == losses.DEFAULT_LOGPROB_CHUNK > 0
    assert rl_lib.rl_section().loss.logprob_chunk == losses.DEFAULT_LOGPROB_CHUNK
    with pytest.raises(ValueError, match="logprob_chunk"):
        losses.PolicyLossConfig(logprob_chunk=-1)
    with pytest.raises(ValueError, match="chunk must be >= 0"):
        losses.token_logprobs(MODEL, params_on_host(), rl_batch()["tokens"],
                              rl_batch()["attention_mask"], chunk=-2)
