"""The RL trainers: GRPO learns a trivial reward; every trainer runs end to end, tiny."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import agrl as agrl_config, dpo as dpo_config, grpo as grpo_config
from experiments import registry, sft_think as sft_config, srpo_stage1
from she_jax import run_dir as run_dir_lib, special_tokens as st
from she_jax.eval import report
from she_jax.models import transformer
from she_jax.rl import curriculum, losses
from she_jax.train import loop, metrics as metrics_lib, optim, rl, selection
from she_jax.train.dpo import build_pairs, pass_at_k
from she_jax.train.state import create_train_state
from tiny_runs import WordTokenizer as _WordTokenizer

# ---------------------------------------------------------------------------------------
# GRPO on a trivial reward: the share of one target token in the completion.

VOCAB, TARGET = 48, 7




def _trivial_scorer(rollouts):
    tokens, lengths = rollouts.tokens, rollouts.lengths
    mask = np.arange(tokens.shape[2])[None, None, :] < lengths[..., None]
    share = ((tokens == TARGET) & mask).sum(-1) / np.maximum(lengths, 1)
    return rl.Scored(rewards=share.astype(np.float32), correct=share > 0.25,
                     metrics={"reward/share": float(share.mean())})


def _trivial_run(workdir, total_steps, *, schedule_steps, prompts, group, new_tokens,
                 num_records, hidden, samples_every=0):
    """GRPO with the trivial scorer through RLFeed and the train loop (2 updates per rollout
    batch); returns the metrics rows."""
    config = grpo_config.get_config()
    config.rl.update(prompts_per_step=prompts, group_size=group, max_new_tokens=new_tokens,
                     num_minibatches=2, samples_every=samples_every)
    config.rl.filter.drop_zero_variance = True
    config.rl.loss.kl_beta = 0.0
    records = [{"id": f"r{i}", "query": f"query {i}", "item_title": f"title {i % 7}",
                "label": st.LABELS[i % 4], "query_type": "category"}
               for i in range(num_records)]
    model_config = transformer.ModelConfig(vocab_size=VOCAB, hidden_size=hidden, num_layers=1,
                                           num_heads=2, num_kv_heads=1, head_dim=hidden // 2,
                                           mlp_dim=2 * hidden)
    params = transformer.init_params(model_config, jax.random.PRNGKey(0))
    config.optimizer.update(lr=3e-2, warmup_steps=1, total_steps=schedule_steps)
    tx, lr_fn = optim.make_optimizer(config.optimizer)
    state = create_train_state(params, tx, jax.random.PRNGKey(1))
    step = loop.make_train_step(
        losses.make_policy_loss_fn(model_config,
                                   rl.policy_loss_config(config.rl.loss, new_tokens)),
        tx, learning_rate_fn=lr_fn)
    feed = rl.RLFeed(config=config, workdir=str(workdir), records=records,
                     tokenizer=_WordTokenizer(), model_config=model_config,
                     scorer=_trivial_scorer, order="think_first")
    loop.train_loop(train_step=step, state=state, data=feed, workdir=str(workdir),
                    total_steps=total_steps, log_every=1, checkpoint_every=1000, progress=False)
    return metrics_lib.read_metrics(str(workdir))


def test_grpo_raises_a_trivial_reward(tmp_path):
    rows = _trivial_run(tmp_path, 60, schedule_steps=60, prompts=4, group=8, new_tokens=8,
                        num_records=40, hidden=32, samples_every=5)
    rewards = [r["reward/share"] for r in rows if "reward/share" in r]
    assert len(rewards) == 30  # 60 updates, 2 per rollout batch
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > max(3 * first, 0.3), (first, last)
    # Observability: the update's and the rollout's metrics are logged every step.
    assert {"clip_fraction", "entropy", "ratio_max", "ratio_min", "rollout/accuracy",
            "rollout/response_length", "filter/zero_variance_fraction", "time/rollout_s",
            "time/reward_s"} <= set(rows[0])
    with open(tmp_path / "samples.jsonl") as f:
        samples = [json.loads(line) for line in f]
    assert {s["step"] for s in samples} == {0, 5, 10, 15, 20, 25}
    assert {"output", "reward", "correct", "label"} <= set(samples[0])


def _small_trivial_run(workdir, total_steps):
    rows = _trivial_run(workdir, total_steps, schedule_steps=4, prompts=2, group=4,
                        new_tokens=6, num_records=16, hidden=16)
    return [(r["step"], r["loss"], r.get("reward/share")) for r in rows]


def test_rl_resume_mid_rollout_batch_is_exact(tmp_path):
    straight = _small_trivial_run(tmp_path / "straight", 4)
    # Stop after update 3: the first of the two updates of rollout batch 2 — the second
    # one's batch is only in the checkpointed data position.
    _small_trivial_run(tmp_path / "resumed", 3)
    resumed = _small_trivial_run(tmp_path / "resumed", 4)
    assert [r[0] for r in resumed] == [1, 2, 3, 4]
    for (step, loss, share), (_, loss_ref, share_ref) in zip(resumed, straight):
        assert loss == pytest.approx(loss_ref, abs=1e-6), step
        assert share == share_ref, step


# ---------------------------------------------------------------------------------------
# DPO pieces.

def test_pass_at_k_is_the_unbiased_estimator():
    # n = 4 samples; prompt A 1 right, prompt B 0, prompt C 4.
    assert pass_at_k(4, np.array([1, 0, 4]), 1) == pytest.approx((0.25 + 0 + 1) / 3)
    # pass@2 of A: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5.
    assert pass_at_k(4, np.array([1, 0, 4]), 2) == pytest.approx((0.5 + 0 + 1) / 3)
    assert pass_at_k(4, np.array([1]), 4) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, np.array([1]), 5)


class _TextTokenizer:
    eos_id = 1

    def encode(self, text):
        return [len(w) for w in text.split()]


def test_pairs_self_correction_oracle_and_skips():
    annotations = {"query": ["category: sofas"], "judgment": ["label: L2"]}
    records = [{"id": "a", "label": "L4"}, {"id": "b", "label": "L2", "annotations": annotations},
               {"id": "c", "label": "L1"}, {"id": "d", "label": "L4"}]
    completions = [[[10, 1], [11, 1]], [[20, 1], [21, 1]], [[30, 1], [31, 1]],
                   [[40, 1], [41, 1]]]
    correct = np.array([[True, False], [False, False], [False, False], [True, True]])
    pairs, counts = build_pairs(records, completions, correct, _TextTokenizer(),
                                "think_first", oracle=True, rng=np.random.default_rng(0))
    assert counts == {"self_correction": 1, "oracle": 1, "all_correct": 1, "no_annotation": 1}
    assert [p["kind"] for p in pairs] == ["self_correction", "oracle"]
    assert pairs[0]["chosen"] == [10, 1] and pairs[0]["rejected"] == [11, 1]
    assert pairs[1]["chosen"][-1] == 1 and pairs[1]["rejected"] in ([20, 1], [21, 1])


# ---------------------------------------------------------------------------------------
# Every trainer end to end on a tiny world, from a tiny SFT run.

@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    os.environ["SHE_JAX_CACHE"] = str(root / "cache")
    config = sft_config.get_config("tiny")
    config.data.world_overrides = {"sft_size": 320, "rl_size": 96, "dev_size": 16,
                                   "test_size": 16}
    config.model.vocab_size = 1024
    config.model.overrides = {"num_layers": 1, "hidden_size": 64, "mlp_dim": 128}
    config.sft.buckets = (160,)
    assert config.sft.order == "think_first"  # the RL configs' starting policy
    config.optimizer.update(total_steps=4, warmup_steps=1)
    config.batch.batch_size = 8
    config.eval.splits = ("test_head",)
    config.eval.update(max_examples=8, batch_size=8, max_new_tokens=24)
    workdir = str(root / "sft")
    registry.run_config(config, workdir)
    return root, workdir, config


def _tiny_rl(config, sft_dir, base):
    config.init_dir = sft_dir
    config.data.world_overrides = base.data.world_overrides
    config.model.vocab_size = base.model.vocab_size
    config.eval.splits = ("test_head",)
    config.eval.update(max_examples=8, batch_size=8, max_new_tokens=24)
    config.optimizer.update(total_steps=2, warmup_steps=1)
    config.checkpoint.every = 1
    if "rl" in config:
        config.rl.update(prompts_per_step=2, group_size=4, max_new_tokens=24, samples_every=1)
    return config


def _check_run(workdir, expected_metrics):
    for name in ("config.json", "metrics.jsonl", "eval.json", "model", "checkpoints"):
        assert os.path.exists(os.path.join(workdir, name)), name
    rows = metrics_lib.read_metrics(workdir)
    assert [r["step"] for r in rows][-1] == 2
    assert expected_metrics <= set(rows[-1]), expected_metrics - set(rows[-1])
    entry = report.read_eval_json(os.path.join(workdir, "eval.json"))["splits"]["test_head"]
    assert entry["n"] == 8


def test_grpo_end_to_end(sft_run):
    root, sft_dir, base = sft_run
    config = _tiny_rl(grpo_config.get_config(), sft_dir, base)
    workdir = str(root / "grpo")
    registry.run_config(config, workdir)
    _check_run(workdir, {"kl", "clip_fraction", "rollout/reward_mean", "reward/accuracy",
                         "filter/dropped_fraction"})
    with open(os.path.join(workdir, "samples.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert any("step" in line and "reward" in line for line in lines)


@pytest.mark.parametrize("mode", ["gold", "hint"])
def test_agrl_end_to_end(sft_run, mode):
    root, sft_dir, base = sft_run
    config = _tiny_rl(agrl_config.get_config(), sft_dir, base)
    config.replay.accuracy_threshold = 1.0  # guide every group not all right
    config.replay.mode = mode
    # Class-balanced prompt pools (the RL default is now the natural prior): with mostly-L4
    # prompts, which this L4-leaning policy answers alike, the two rollout batches' guided
    # groups can all be zero-variance and dropped, leaving no off-policy row to check.
    config.rl.filter.label_balance_power = 1.0
    if mode == "gold":  # a gold CoT needs annotations (every sft record has them) and room
        config.rl.train_split = "sft"
        config.rl.max_new_tokens = 128
    workdir = str(root / f"agrl_{mode}")
    registry.run_config(config, workdir)
    _check_run(workdir, {"replay/guided_share", "rollout/reward_mean", "off_policy_fraction"})
    rows = metrics_lib.read_metrics(workdir)
    # The tiny SFT policy is rarely right, so groups get guided and their samples are
    # trained off-policy.
    assert max(r["replay/guided_share"] for r in rows) > 0
    assert max(r["off_policy_fraction"] for r in rows) > 0


def test_srpo_curriculum_stage_end_to_end(sft_run):
    root, sft_dir, base = sft_run
    config = _tiny_rl(srpo_stage1.get_config(), sft_dir, base)
    config.srpo.step_reward.source = "verifier"
    config.curriculum.update(difficulty_dir=sft_dir, pool_size=24, num_samples=2,
                             max_new_tokens=24, batch=8, min_prompts=1,
                             pass_rate_band=(0.0, 1.0), query_types=curriculum.ALL_TYPES)
    workdir = str(root / "srpo")
    registry.run_config(config, workdir)
    _check_run(workdir, {"entropy", "rollout/reward_mean", "verifier/coverage",
                         "step_reward/mean", "filter/diversity_mean"})
    # The SFT policy's pass rates were estimated once and cached in the SFT run.
    with open(os.path.join(sft_dir, curriculum.PASS_RATES_FILE)) as f:
        cached = json.load(f)
    assert len(cached["pass_rates"]) == 24
    assert all(0.0 <= p <= 1.0 and p * 2 == int(p * 2) for p in cached["pass_rates"].values())
    records = [{"id": i, "query_type": "category"} for i in cached["pass_rates"]]
    picked = curriculum.select_stage(records, cached["pass_rates"], (0.5, 1.0), ("category",))
    assert {r["id"] for r in picked} == {i for i, p in cached["pass_rates"].items() if p >= 0.5}


def test_curriculum_selection_by_band_and_type():
    records = [{"id": "a", "query_type": "category"}, {"id": "b", "query_type": "negation"},
               {"id": "c", "query_type": "category"}, {"id": "d", "query_type": "category"}]
    rates = {"a": 0.25, "b": 0.5, "c": 1.0}  # d was not estimated
    assert [r["id"] for r in curriculum.select_stage(records, rates, (0.0, 0.5),
                                                     curriculum.ALL_TYPES)] == ["a", "b"]
    assert [r["id"] for r in curriculum.select_stage(records, rates, (0.0, 1.0),
                                                     ("category",))] == ["a", "c"]
    with pytest.raises(ValueError, match="pass_rate_band"):
        curriculum.select_stage(records, rates, (0.6, 0.5), ("category",))
    with pytest.raises(ValueError, match="unknown types"):
        curriculum.select_stage(records, rates, (0.0, 1.0), ("colour",))


def test_dpo_end_to_end(sft_run):
    root, sft_dir, base = sft_run
    config = _tiny_rl(dpo_config.get_config(), sft_dir, base)
    config.dpo.update(num_prompts=8, num_samples=4, max_new_tokens=24, sample_batch=8)
    config.batch.batch_size = 2
    workdir = str(root / "dpo")
    registry.run_config(config, workdir)
    _check_run(workdir, {"reward_margin", "reward_accuracy", "chosen_logp"})
    with open(os.path.join(workdir, "pass_at_n.json")) as f:
        table = json.load(f)["pass_at_k"]
    values = [table[f"pass@{k}"] for k in range(1, 5)]
    assert values == sorted(values)  # pass@k never falls with k


def test_grpo_with_anchor_keeps_the_best_dev_checkpoint(sft_run):
    root, sft_dir, base = sft_run
    config = _tiny_rl(grpo_config.get_config(), sft_dir, base)
    config.optimizer.update(total_steps=3)
    config.eval.update(select_every=1, select_split="dev", select_examples=8)
    config.rl.anchor.update(weight=0.5, batch_size=2, bucket=160)
    workdir = str(root / "grpo_select")
    registry.run_config(config, workdir)
    rows = metrics_lib.read_metrics(workdir)
    assert all("anchor/nll" in r and r["anchor/nll"] > 0 for r in rows)
    assert [r["step"] for r in rows if "eval/select_macro_f1" in r] == [1, 2, 3]
    with open(os.path.join(workdir, "best", "selection.json")) as f:
        chosen = json.load(f)
    values = [h["value"] for h in chosen["history"]]
    # The start (step 0) is scored before the first update: a candidate too.
    assert [h["step"] for h in chosen["history"]] == [0, 1, 2, 3] and chosen["n"] == 8
    assert chosen["value"] == max(values)
    assert chosen["step"] == values.index(max(values))  # the first of equal bests
    # best/ is a run directory a later run can start from: model, its tokenizer, config.
    best_dir = selection.best_run_dir(workdir)
    model_config, params = run_dir_lib.load_model(best_dir)  # checks the tokenizer's print
    assert run_dir_lib.load_tokenizer(best_dir).vocab_size == model_config.vocab_size
    best_eval = report.read_eval_json(os.path.join(workdir, "best", "eval.json"))
    assert best_eval["splits"]["test_head"]["n"] == 8
    with open(os.path.join(workdir, "best", "config.json")) as f:
        assert json.load(f)["checkpoint_selection"] == "best_dev"
    assert os.path.exists(os.path.join(workdir, "best", "predictions.jsonl"))
