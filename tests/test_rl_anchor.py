"""The RL driver's SFT anchor and its predicted-label-mix metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import grpo as grpo_config
from she_jax import special_tokens as st
from she_jax.data import cot
from she_jax.models import transformer
from she_jax.rl import losses
from she_jax.rl.rollout import Rollouts
from she_jax.train import rl, sft
from tiny_runs import WordTokenizer as _WordTokenizer

MODEL = transformer.ModelConfig(vocab_size=48, hidden_size=16, num_layers=1, num_heads=2,
                                num_kv_heads=1, head_dim=8, mlp_dim=32)
LABEL_IDS = (45, 46, 47, 39)


def _policy_batch(rng, rows=4, length=10, prompt_len=4):
    tokens = rng.integers(2, 40, (rows, length)).astype(np.int32)
    loss_mask = np.zeros((rows, length - 1), bool)
    loss_mask[:, prompt_len - 1:] = True
    return {"tokens": tokens, "attention_mask": np.ones((rows, length), bool),
            "loss_mask": loss_mask, "old_logprobs": np.full((rows, length - 1), -3.0, np.float32),
            "advantages": rng.normal(size=(rows, length - 1)).astype(np.float32)}


def _anchor_batch(rng, rows=3, length=12):
    loss_mask = np.zeros((rows, length), bool)
    loss_mask[:, 5:9] = True
    loss_mask[0, 9] = True
    tokens = rng.integers(2, 40, (rows, length)).astype(np.int32)
    tokens[:, 8] = LABEL_IDS[0]
    return {"tokens": tokens, "loss_mask": loss_mask,
            "attention_mask": np.ones((rows, length), bool)}


def test_anchored_loss_adds_weight_times_the_gold_nll_mean():
    rng = np.random.default_rng(0)
    params = transformer.init_params(MODEL, jax.random.PRNGKey(0))
    policy_fn = losses.make_policy_loss_fn(MODEL, losses.PolicyLossConfig())
    nll_fn = sft.sft_loss_fn(MODEL, LABEL_IDS)
    policy_batch, anchor = _policy_batch(rng), _anchor_batch(rng)
    batch = {**policy_batch, **{f"anchor_{k}": v for k, v in anchor.items()}}
    key = jax.random.PRNGKey(1)

    for weight in (0.0, 0.5, 2.0):
        fn = rl.anchored_loss_fn(policy_fn, MODEL, LABEL_IDS, weight)
        total, aux = fn(params, batch, key)
        policy_sum, policy_aux = policy_fn(params, policy_batch, key)
        nll_sum, nll_aux = nll_fn(params, anchor, key)
        nll_mean = nll_sum / nll_aux["normalizer"]
        expected = policy_sum + weight * policy_aux["normalizer"] * nll_mean
        np.testing.assert_allclose(total, expected, rtol=1e-5)
        assert aux["normalizer"] == policy_aux["normalizer"]  # the policy's, unchanged
        np.testing.assert_allclose(aux["anchor/nll"][0], nll_sum, rtol=1e-6)
        assert aux["anchor/nll"][1] == nll_aux["normalizer"]

    # The gradient is the policy's plus weight * normalizer * grad(mean NLL).
    weight = 0.7
    fn = rl.anchored_loss_fn(policy_fn, MODEL, LABEL_IDS, weight)
    g_total = jax.grad(lambda p: fn(p, batch, key)[0])(params)
    g_policy = jax.grad(lambda p: policy_fn(p, policy_batch, key)[0])(params)
    norm = policy_fn(params, policy_batch, key)[1]["normalizer"]
    g_nll = jax.grad(lambda p: nll_fn(p, anchor, key)[0] / nll_fn(p, anchor, key)[1]["normalizer"]
                     )(params)
    expected = jax.tree.map(lambda a, b: a + weight * norm * b, g_policy, g_nll)
    for got, want in zip(jax.tree.leaves(g_total), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def _rollouts(pred_labels, gold_labels, group):
    """Rollouts whose parsed labels are pred_labels ([B][G]); only what the metric reads."""
    records = [{"id": str(i), "label": g} for i, g in enumerate(gold_labels)]
    parsed = [[cot.ParsedCoT(steps={}, label=p, errors=() if p else ("no label",))
               for p in row] for row in pred_labels]
    b = len(records)
    zeros = np.zeros((b, group, 1))
    return Rollouts(records=records, prompt_tokens=np.zeros((b, 1)), prompt_mask=np.ones((b, 1)),
                    tokens=zeros, lengths=np.ones((b, group)), logprobs=zeros,
                    texts=[[""] * group] * b, parsed=parsed, off_policy=zeros[..., 0] > 0)


def test_label_mix_metrics_against_a_hand_count():
    rollouts = _rollouts([["L4", "L4", "L2", None], ["L2", "L2", "L2", "L1"]], ["L4", "L1"], 4)
    m = rl.label_mix_metrics(rollouts)
    assert m["labels/pred_L4"] == 2 / 8 and m["labels/pred_L2"] == 4 / 8
    assert m["labels/pred_L1"] == 1 / 8 and m["labels/pred_L3"] == 0.0
    assert m["labels/pred_invalid"] == 1 / 8
    assert m["labels/gold_L4"] == 0.5 and m["labels/gold_L1"] == 0.5
    # |2/8 - 4/8| + 0 + |4/8 - 0| + |1/8 - 4/8| = 1.125, plus the invalid 1/8, halved.
    assert abs(m["labels/tv_distance"] - 0.5 * (1.125 + 0.125)) < 1e-12




def test_feed_attaches_one_anchor_batch_per_update_and_checkpoints_its_position(tmp_path):
    config = grpo_config.get_config()
    config.rl.update(prompts_per_step=2, group_size=2, max_new_tokens=3, num_minibatches=2,
                     samples_every=0)
    config.rl.filter.drop_zero_variance = False
    config.rl.loss.kl_beta = 0.0
    config.rl.anchor.update(weight=0.5, batch_size=2, bucket=40)
    records = [{"id": f"r{i}", "query": f"q{i}", "item_title": f"t{i}", "label": st.LABELS[i % 4],
                "query_type": "category"} for i in range(8)]
    sft_records = records  # no annotations: the target is the label token alone
    scorer = lambda r: rl.Scored(rewards=np.zeros(r.lengths.shape, np.float32),
                                 correct=np.zeros(r.lengths.shape, bool))
    feed = rl.RLFeed(config=config, workdir=str(tmp_path), records=records,
                     tokenizer=_WordTokenizer(), model_config=MODEL, scorer=scorer,
                     order="think_first", anchor_records=sft_records)
    feed.observe_state(type("S", (), {"params": transformer.init_params(
        MODEL, jax.random.PRNGKey(0))})())
    first, second = next(feed), next(feed)
    for batch in (first, second):
        assert batch["anchor_tokens"].shape == (2, 40)
        assert batch["anchor_loss_mask"].shape == (2, 40) and batch["anchor_loss_mask"].any()
    assert not np.array_equal(first["anchor_tokens"], second["anchor_tokens"])
    assert feed.get_state()["anchor_index"] == 2
    state = feed.get_state()
    feed.set_state({**state, "anchor_index": 0})
    assert feed.get_state()["anchor_index"] == 0


def test_shared_prompt_logprobs_with_a_one_token_completion():
    """An RL batch whose completions are one token (a label-only answer) runs the shared
    prompt path too, with the same log-probs as the unshared forward."""
    rng = np.random.default_rng(3)
    params = transformer.init_params(MODEL, jax.random.PRNGKey(0))
    prompts = rng.integers(2, 40, (3, 6))
    tokens = np.concatenate([np.repeat(prompts, 4, axis=0), rng.integers(2, 40, (12, 1))],
                            axis=1).astype(np.int32)
    mask = np.ones(tokens.shape, bool)
    shared, _ = losses.token_logprobs(MODEL, params, tokens, mask, first_target=5,
                                      group_size=4)
    plain, _ = losses.token_logprobs(MODEL, params, tokens, mask, first_target=5)
    np.testing.assert_allclose(shared[:, 5:], plain[:, 5:], atol=1e-5)


def test_dpo_nll_term_adds_the_chosen_mean_nll_per_pair():
    """RPO: loss = DPO + nll_weight * sum over pairs of the chosen answer's mean token NLL."""
    from she_jax.train import dpo

    rng = np.random.default_rng(1)
    params = transformer.init_params(MODEL, jax.random.PRNGKey(0))
    rows, length = 4, 9  # 2 pairs: rows 0, 2 chosen; 1, 3 rejected
    loss_mask = np.zeros((rows, length - 1), bool)
    loss_mask[:, 3:] = True
    loss_mask[0, 7] = False  # the first chosen answer is a token shorter
    batch = {"tokens": rng.integers(2, 40, (rows, length)).astype(np.int32),
             "attention_mask": np.ones((rows, length), bool), "loss_mask": loss_mask,
             "ref_logp": np.array([-20.0, -21.0, -19.0, -18.0], np.float32)}
    key = jax.random.PRNGKey(0)
    plain, _ = dpo.dpo_loss_fn(MODEL, 0.1, 0.0)(params, batch, key)
    rpo, aux = dpo.dpo_loss_fn(MODEL, 0.1, 0.0, nll_weight=0.5)(params, batch, key)
    logp, _ = losses.token_logprobs(MODEL, params, batch["tokens"], batch["attention_mask"])
    logp = np.asarray(logp)
    chosen_nll = [-(logp[r] * loss_mask[r]).sum() / loss_mask[r].sum() for r in (0, 2)]
    np.testing.assert_allclose(rpo - plain, 0.5 * sum(chosen_nll), rtol=1e-5)
    np.testing.assert_allclose(aux["chosen_nll"][0], sum(chosen_nll), rtol=1e-5)


def _split_records():
    """An `rl`-like split: two records with step annotations, one with a stored CoT, three
    with the label alone."""
    annotated = {"query": "red shoes", "item_title": "red shoes", "label": "L4",
                 "annotations": {"query": ["category: shoes"], "judgment": ["exact"]}}
    stored = {"query": "blue hat", "item_title": "blue hat", "label": "L4",
              "cot": cot.render_cot({"query": ["category: hats"]}, "L4", "think_first")}
    plain = {"query": "green bag", "item_title": "green bag", "label": "L2"}
    return [dict(annotated, id="a0"), dict(plain, id="p0"), dict(stored, id="s0"),
            dict(plain, id="p1"), dict(annotated, id="a1"), dict(plain, id="p2")]


def test_anchor_and_sft_records_keep_only_gold_cots_and_name_the_key():
    splits = {"rl": _split_records(), "sft": _split_records()[1::2][:1]}
    anchor = {"weight": 0.5, "split": "rl"}
    kept = rl.anchor_split_records(anchor, splits)
    assert [r["id"] for r in kept] == ["a0", "s0", "a1"]  # in order, the label-only ones out
    # every kept record renders a CoT, not the bare label token
    assert all(cot.render_target(r) != cot.label_token(r["label"]) for r in kept)
    assert rl.anchor_split_records({**anchor, "weight": 0.0}, splits) is None
    with pytest.raises(ValueError, match=r"config.rl.anchor.split='sft'.*none of the 1"):
        rl.anchor_split_records({**anchor, "split": "sft"}, splits)
    with pytest.raises(ValueError, match="config.rl.anchor.split: split 'dev' is missing"):
        rl.anchor_split_records({**anchor, "split": "dev"}, splits)

    section = {"train_split": "rl", "require_cot": True}
    assert [r["id"] for r in sft.training_records(section, splits)] == ["a0", "s0", "a1"]
    everything = sft.training_records({**section, "require_cot": False}, splits)
    assert [r["id"] for r in everything] == [r["id"] for r in splits["rl"]]
    with pytest.raises(ValueError, match=r"config.sft.train_split='sft'"):
        sft.training_records({**section, "train_split": "sft"}, splits)
    assert sft.sft_section().require_cot is True
