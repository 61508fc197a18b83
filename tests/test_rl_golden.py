"""Golden tests of the RL stack on a contextual bandit where improvement is certain.

The task: the prompt names a context c0..c7 (plus a noise word); the right answer is one
label token fixed by the context, with a skewed gold mix (L4 1/2, L3 1/8, L2 1/4, L1 1/8).
The starting policy is "half-trained": it answers with the gold label *prior*, whatever the
context (expected accuracy ~0.34). GRPO through the real driver (RLFeed: pool sampler,
group sampler, dynamic sampling, advantages, clipped loss, train loop) must then learn the
context, and must not drag the predicted label mix away from the gold mix; rewards that
carry no information must leave the label marginal where it was; and the log-probs the
ratio uses must be the policy's own whatever the sampling settings.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import grpo as grpo_config
from she_jax import special_tokens as st
from she_jax.models import transformer
from she_jax.rl import losses, rollout as rollout_lib
from she_jax.train import loop, metrics as metrics_lib, optim, rl, rl_feed
from she_jax.train.state import create_train_state
from tiny_runs import WordTokenizer as _WordTokenizer

VOCAB = 48
GOLD_OF_CONTEXT = (0, 0, 0, 0, 2, 2, 1, 3)  # class ids (L4, L3, L2, L1 = 0..3)
GOLD_MIX = np.bincount(GOLD_OF_CONTEXT, minlength=4) / len(GOLD_OF_CONTEXT)




def _records(noise_words, gold=GOLD_OF_CONTEXT):
    return [{"id": f"c{c}-{n}", "query": f"c{c}", "item_title": n,
             "label": st.LABELS[gold[c]], "query_type": "category"}
            for c in range(len(gold)) for n in noise_words]


TRAIN = _records([f"n{j}" for j in range(6)])
HELD_OUT = _records([f"m{j}" for j in range(6)])
MODEL = transformer.ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=2,
                                num_kv_heads=1, head_dim=16, mlp_dim=64)


def _prompts(records, prompt_len):
    return rollout_lib.encode_prompts(records, _WordTokenizer(), prompt_len)


def _label_probs(params, records, prompt_len):
    """[N, 4] the policy's probability of each label token as the first answer token."""
    tokens, mask = _prompts(records, prompt_len)
    logits = transformer.forward(MODEL, params, jnp.asarray(tokens), jnp.asarray(mask))[:, -1]
    probs = jax.nn.softmax(logits, axis=-1)
    return np.asarray(probs[:, jnp.asarray(_WordTokenizer.label_ids)])


def _expected_accuracy(params, records, prompt_len):
    probs = _label_probs(params, records, prompt_len)
    gold = np.array([st.LABELS.index(r["label"]) for r in records])
    return float(probs[np.arange(len(records)), gold].mean())


def _label_mix(params, records, prompt_len):
    probs = _label_probs(params, records, prompt_len)
    return probs.mean(axis=0) / probs.mean(axis=0).sum()


def _start_policy(prompt_len, context_weight, records=TRAIN):
    """The starting policy: cross-entropy of the first answer token against the soft target
    context_weight * onehot(gold) + (1 - context_weight) * GOLD_MIX on every training prompt.
    context_weight 0 answers the gold prior whatever the context; 0.5 is "half-trained":
    half its mass on the right label, half on the prior, and still the gold label mix."""
    params = transformer.init_params(MODEL, jax.random.PRNGKey(0))
    tokens, mask = (jnp.asarray(x) for x in _prompts(records, prompt_len))
    label_ids = jnp.asarray(_WordTokenizer.label_ids)
    gold = jnp.asarray([st.LABELS.index(r["label"]) for r in records])
    soft = context_weight * jax.nn.one_hot(gold, 4) + (1 - context_weight) * GOLD_MIX
    target = jnp.zeros((len(records), VOCAB)).at[:, label_ids].set(soft)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            logits = transformer.forward(MODEL, p, tokens, mask)[:, -1]
            return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))
        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(200):
        params, opt_state = step(params, opt_state)
    return params


def _bandit_scorer(reward_kind, seed=0):
    """The first completion token against the gold label token. reward_kind: 'correct'
    (1 if right), 'constant' (always 1), 'coin' (a fair coin, independent of the answer)."""
    coin = np.random.default_rng(seed)
    label_ids = np.asarray(_WordTokenizer.label_ids)

    def scorer(rollouts):
        gold = np.array([label_ids[st.LABELS.index(r["label"])] for r in rollouts.records])
        correct = rollouts.tokens[:, :, 0] == gold[:, None]
        if reward_kind == "correct":
            rewards = correct.astype(np.float32)
        elif reward_kind == "constant":
            rewards = np.ones(correct.shape, np.float32)
        else:
            rewards = coin.integers(0, 2, correct.shape).astype(np.float32)
        return rl.Scored(rewards=rewards, correct=correct)

    return scorer


def _grpo(workdir, params, scorer, *, updates, lr=3e-3, balance_power=0.0, temperature=1.0,
          top_k=0, drop_zero_variance=True, kl_beta=0.0, entropy_coef=0.0, prior_weight=0.0,
          records=TRAIN, macro_f1_weight=0.0, advantage_scale="std", clamp=2.0,
          placebo=False):
    config = grpo_config.get_config()
    config.rl.update(prompts_per_step=8, group_size=8, max_new_tokens=1, samples_every=0,
                     temperature=temperature, top_k=top_k)
    config.rl.filter.label_balance_power = balance_power
    config.rl.filter.drop_zero_variance = drop_zero_variance
    config.rl.loss.kl_beta = kl_beta
    config.rl.loss.entropy_coef = entropy_coef
    config.rl.label_prior.weight = prior_weight
    config.rl.macro_f1.weight = macro_f1_weight
    config.rl.advantage.scale = advantage_scale
    config.rl.advantage.clamp = clamp
    config.rl.placebo = placebo
    config.optimizer.update(lr=lr, warmup_steps=1, total_steps=updates)
    tx, lr_fn = optim.make_optimizer(config.optimizer)
    # The step donates its state: train a copy, so `params` stays usable by the caller.
    state = create_train_state(jax.tree.map(jnp.copy, params), tx, jax.random.PRNGKey(1))
    step = loop.make_train_step(
        losses.make_policy_loss_fn(MODEL, rl.policy_loss_config(config.rl.loss, 1)),
        tx, learning_rate_fn=lr_fn)
    feed = rl.RLFeed(config=config, workdir=str(workdir), records=records,
                     tokenizer=_WordTokenizer(), model_config=MODEL, scorer=scorer,
                     order="think_first",
                     ref_params=jax.tree.map(jnp.copy, params) if kl_beta else None)
    state = loop.train_loop(train_step=step, state=state, data=feed, workdir=str(workdir),
                            total_steps=updates, log_every=1, checkpoint_every=10_000,
                            progress=False)
    return state.params, metrics_lib.read_metrics(str(workdir)), feed.prompt_len


def _tv(a, b):
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def test_grpo_learns_the_context_and_keeps_the_gold_label_mix(tmp_path):
    prompt_len = rollout_lib.prompt_length_for(TRAIN, _WordTokenizer())
    start = _start_policy(prompt_len, context_weight=0.5)
    start_acc = _expected_accuracy(start, HELD_OUT, prompt_len)
    assert 0.6 < start_acc < 0.72, start_acc  # 0.5 + 0.5 * (sum of squares of the mix)
    assert _tv(_label_mix(start, HELD_OUT, prompt_len), GOLD_MIX) < 0.02

    # 40 updates of 8 prompts x 8 samples at a sane rate (measured: 0.67 -> 0.98, the mix
    # within 0.01 of gold; at lr 1e-2 the accuracy still rises, to 0.89, but L4 drifts to
    # 0.60; from a prior-only start, context_weight 0, every rate tried collapsed onto L4).
    params, rows, _ = _grpo(tmp_path, start, _bandit_scorer("correct"), updates=40)
    end_acc = _expected_accuracy(params, HELD_OUT, prompt_len)
    end_mix = _label_mix(params, HELD_OUT, prompt_len)
    assert end_acc > 0.9, (start_acc, end_acc)
    assert _tv(end_mix, GOLD_MIX) < 0.05, (end_mix, GOLD_MIX)
    # The rollout accuracy the driver logs rises with it.
    # (Over the groups kept: all-correct groups are dropped, so it stays below 1.)
    accuracy = [r["rollout/accuracy"] for r in rows if "rollout/accuracy" in r]
    assert np.mean(accuracy[-5:]) > np.mean(accuracy[:5]) + 0.05, accuracy


def test_rewards_without_information_leave_the_label_marginal(tmp_path):
    prompt_len = rollout_lib.prompt_length_for(TRAIN, _WordTokenizer())
    start = _start_policy(prompt_len, context_weight=0.5)
    start_mix = _label_mix(start, HELD_OUT, prompt_len)

    # All rewards equal: every advantage is 0, so nothing moves at all (groups are kept,
    # not dropped, so the update really runs on them).
    params, rows, _ = _grpo(tmp_path / "constant", start, _bandit_scorer("constant"),
                            updates=10, drop_zero_variance=False)
    assert all(r["grad_norm"] == 0.0 for r in rows if "grad_norm" in r)
    np.testing.assert_allclose(_label_mix(params, HELD_OUT, prompt_len), start_mix, atol=1e-6)

    # Rewards from a coin, independent of the answer: the expected update is 0, but Adam
    # takes a full-size step along each batch's noise, so one run's marginal wanders
    # (measured: TV 0.24 from the start after 20 updates at 3e-3). Averaged over coin
    # seeds the wander cancels; a reward that prefers one label moves it consistently.
    shifts = []
    for seed in range(3):
        params, _, _ = _grpo(tmp_path / f"coin{seed}", start, _bandit_scorer("coin", seed),
                             updates=10)
        shifts.append(_label_mix(params, HELD_OUT, prompt_len) - start_mix)
    coin_shift = 0.5 * float(np.abs(np.mean(shifts, axis=0)).sum())
    favour_l1 = lambda rollouts: rl.Scored(
        rewards=(rollouts.tokens[:, :, 0] == _WordTokenizer.label_ids[3]).astype(np.float32),
        correct=rollouts.tokens[:, :, 0] == _WordTokenizer.label_ids[3])
    params, _, _ = _grpo(tmp_path / "l1", start, favour_l1, updates=10)
    biased_shift = _tv(_label_mix(params, HELD_OUT, prompt_len), start_mix)
    assert biased_shift > 0.3 and biased_shift > 3 * coin_shift, (coin_shift, biased_shift)


def test_placebo_shuffle_permutes_each_group_and_moves_a_rollout_s_scores_together():
    rng = np.random.default_rng(0)
    b, g, s = 5, 8, 3
    rewards = rng.normal(size=(b, g)).astype(np.float32)
    correct = rng.random((b, g)) < 0.5
    step_rewards = rng.normal(size=(b, g, s)).astype(np.float32)
    step_valid = rng.random((b, g, s)) < 0.7
    scored = rl.Scored(rewards=rewards, correct=correct, step_rewards=step_rewards,
                       step_valid=step_valid, step_correct=step_rewards > 0,
                       per_rollout={"format_valid": correct}, metrics={"reward/accuracy": 0.5})
    out = rl_feed.placebo_shuffle(scored, np.random.default_rng(1))
    assert not np.array_equal(out.rewards, rewards)  # 5 groups of 8: not the identity
    for i in range(b):
        # Each group keeps its rewards (so the filter keeps the same groups) ...
        np.testing.assert_array_equal(np.sort(out.rewards[i]), np.sort(rewards[i]))
        assert out.correct[i].sum() == correct[i].sum()
        # ... and every array of a rollout moves with its reward: the same permutation.
        perm = [int(np.flatnonzero(rewards[i] == r)[0]) for r in out.rewards[i]]
        np.testing.assert_array_equal(out.correct[i], correct[i, perm])
        np.testing.assert_array_equal(out.step_rewards[i], step_rewards[i, perm])
        np.testing.assert_array_equal(out.step_valid[i], step_valid[i, perm])
        np.testing.assert_array_equal(out.step_correct[i], step_rewards[i, perm] > 0)
    # The scorer's own metrics and per-rollout facts about the text are left as they were.
    assert out.metrics == scored.metrics and out.per_rollout["format_valid"] is correct
    # Seeded: the same generator state gives the same shuffle.
    again = rl_feed.placebo_shuffle(scored, np.random.default_rng(1))
    np.testing.assert_array_equal(again.rewards, out.rewards)
    # Scorers without step rewards keep None.
    plain = rl_feed.placebo_shuffle(rl.Scored(rewards=rewards, correct=correct),
                                    np.random.default_rng(2))
    assert plain.step_rewards is None and plain.step_valid is None


def test_placebo_grpo_does_not_learn_what_grpo_learns(tmp_path):
    """The control: the same run with each group's rewards shuffled among its rollouts
    takes updates of RL's size but learns nothing about the context (measured: expected
    held-out accuracy 0.67 -> 0.29 with the placebo, the noise steps undoing the start's
    context, against 0.98 without)."""
    prompt_len = rollout_lib.prompt_length_for(TRAIN, _WordTokenizer())
    start = _start_policy(prompt_len, context_weight=0.5)
    start_acc = _expected_accuracy(start, HELD_OUT, prompt_len)
    params, rows, _ = _grpo(tmp_path / "placebo", start, _bandit_scorer("correct"),
                            updates=40, placebo=True)
    placebo_acc = _expected_accuracy(params, HELD_OUT, prompt_len)
    real, _, _ = _grpo(tmp_path / "real", start, _bandit_scorer("correct"), updates=40)
    real_acc = _expected_accuracy(real, HELD_OUT, prompt_len)
    assert real_acc > 0.9 and placebo_acc < start_acc + 0.1, (start_acc, placebo_acc, real_acc)
    # The updates were real (not zero) and the logged rollout accuracy is the true one: the
    # groups kept still mix right and wrong answers, as without the placebo.
    assert all(r["grad_norm"] > 0 for r in rows if "grad_norm" in r)
    accuracy = [r["rollout/accuracy"] for r in rows if "rollout/accuracy" in r]
    assert 0.2 < np.mean(accuracy) < 0.9, accuracy


def test_ratio_uses_the_policy_logprobs_whatever_the_sampling_settings(tmp_path):
    """Rollouts drawn at temperature 0.7 with top-k 2 store the raw policy's log-probs, so
    the first (on-policy) update's importance ratio is exactly 1 on every token."""
    prompt_len = rollout_lib.prompt_length_for(TRAIN, _WordTokenizer())
    start = _start_policy(prompt_len, context_weight=0.5)
    _, rows, _ = _grpo(tmp_path, start, _bandit_scorer("correct"), updates=4,
                       temperature=0.7, top_k=2)
    for row in rows:
        assert abs(row["ratio_min"] - 1.0) < 1e-5 and abs(row["ratio_max"] - 1.0) < 1e-5, row
        assert row["clip_fraction"] == 0.0


def test_label_prior_term_stops_the_collapse_from_a_prior_only_start(tmp_path):
    """From a start that answers the gold prior whatever the context, plain GRPO collapses
    onto the majority label (the failure the tiny ladder showed); with the label-prior term
    (rl.label_prior.weight) the predicted mix stays near gold and the context is learnt.
    Measured: without 1.00 L4, accuracy 0.50; with weight 0.5, TV 0.10, accuracy 0.71."""
    prompt_len = rollout_lib.prompt_length_for(TRAIN, _WordTokenizer())
    start = _start_policy(prompt_len, context_weight=0.0)
    assert _tv(_label_mix(start, HELD_OUT, prompt_len), GOLD_MIX) < 0.02
    plain, _, _ = _grpo(tmp_path / "plain", start, _bandit_scorer("correct"), updates=80,
                        lr=1e-2)
    prior, rows, _ = _grpo(tmp_path / "prior", start, _bandit_scorer("correct"), updates=80,
                           lr=1e-2, prior_weight=0.5)
    plain_mix, prior_mix = (_label_mix(p, HELD_OUT, prompt_len) for p in (plain, prior))
    assert plain_mix[0] > 0.9, plain_mix  # the collapse, without the term
    assert _tv(prior_mix, GOLD_MIX) < 0.2, prior_mix
    plain_acc, prior_acc = (_expected_accuracy(p, HELD_OUT, prompt_len) for p in (plain, prior))
    assert prior_acc > plain_acc + 0.1, (plain_acc, prior_acc)
    # The driver logs the pool's estimated mix and its KL to the target.
    kl = [r["prior/kl"] for r in rows if "prior/kl" in r]
    assert len(kl) == 80 and all(np.isfinite(kl)), kl


def test_likelihood_scale_learns_from_a_prior_only_start_without_collapse(tmp_path):
    """advantage.scale='mean' (the advantage divided by the group's success rate: the
    gradient of log p(right) instead of p(right)) from the start where plain GRPO collapses
    onto L4 (previous test): at the gold prior the log-likelihood's push on the shared label
    bias is zero, so the context is learnt and the mix stays near gold. Measured: accuracy
    0.82, mix 0.52 / 0.00 / 0.36 / 0.13 (plain GRPO: 0.50, all L4)."""
    prompt_len = rollout_lib.prompt_length_for(TRAIN, _WordTokenizer())
    start = _start_policy(prompt_len, context_weight=0.0)
    start_acc = _expected_accuracy(start, HELD_OUT, prompt_len)
    params, _, _ = _grpo(tmp_path, start, _bandit_scorer("correct"), updates=80, lr=1e-2,
                         advantage_scale="mean", clamp=0.0)
    mix = _label_mix(params, HELD_OUT, prompt_len)
    assert mix[0] < 0.7, mix
    assert _tv(mix, GOLD_MIX) < 0.2, mix
    assert _expected_accuracy(params, HELD_OUT, prompt_len) > start_acc + 0.3


def test_label_prior_term_keeps_learning_from_a_half_trained_start(tmp_path):
    """On the golden task the term costs nothing where the mix is already right: measured
    accuracy 0.98 (0.98 without), mix within 0.003 of gold."""
    prompt_len = rollout_lib.prompt_length_for(TRAIN, _WordTokenizer())
    start = _start_policy(prompt_len, context_weight=0.5)
    params, _, _ = _grpo(tmp_path, start, _bandit_scorer("correct"), updates=40,
                         prior_weight=0.5)
    assert _expected_accuracy(params, HELD_OUT, prompt_len) > 0.9
    assert _tv(_label_mix(params, HELD_OUT, prompt_len), GOLD_MIX) < 0.05


def test_label_prior_term_runs_on_a_pool_without_some_label(tmp_path):
    """A prompt pool may lack a label (a curriculum stage of easy prompts): the driver's
    target then gives that label a small floor of mass, and the run stays finite, with the
    term off (the default: metrics only) and on."""
    prompt_len = rollout_lib.prompt_length_for(TRAIN, _WordTokenizer())
    start = _start_policy(prompt_len, context_weight=0.5)
    no_l3 = [r for r in TRAIN if r["label"] != "L3"]
    for weight in (0.0, 0.5):
        _, rows, _ = _grpo(tmp_path / f"w{weight}", start, _bandit_scorer("correct"),
                           updates=3, prior_weight=weight, records=no_l3)
        kl = [r["prior/kl"] for r in rows if "prior/kl" in r]
        assert len(kl) == 3 and np.isfinite(kl).all(), kl
        assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)



def test_macro_f1_reward_reaches_the_update_from_the_sampler_mix(tmp_path):
    """rl.macro_f1.weight > 0: the driver scores every rollout with the table built from
    the gold mix the prompt sampler draws (here the data's own), logs it, and the run stays
    finite; off (the default) it logs nothing of it."""
    from she_jax.rewards import label_prior, macro_f1

    prompt_len = rollout_lib.prompt_length_for(TRAIN, _WordTokenizer())
    start = _start_policy(prompt_len, context_weight=0.5)
    _, rows, _ = _grpo(tmp_path / "on", start, _bandit_scorer("correct"), updates=3,
                       macro_f1_weight=1.0, advantage_scale="none")
    right, _, _ = macro_f1.reward_table(label_prior.sampler_target(GOLD_MIX), 0.5)
    logged = [r for r in rows if "mf1/right_L3" in r]
    assert len(logged) == 3
    for i, label in enumerate(st.LABELS):
        assert logged[-1][f"mf1/right_{label}"] == pytest.approx(right[i], rel=1e-5)
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    _, rows, _ = _grpo(tmp_path / "off", start, _bandit_scorer("correct"), updates=2)
    assert not any("mf1/reward_mean" in r for r in rows)
