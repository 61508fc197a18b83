"""SFT: the loss on hand-computed cases, and the real trainer end to end at a tiny size."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import registry, sft as sft_config
from she_jax.eval import evaluate, report
from she_jax.models import precision, transformer
from she_jax.train import bootstrap, metrics as metrics_lib
from she_jax.train.sft import OverlapTask, sft_loss_fn, title_query_overlap, training_orders


def _tiny_model(vocab=16):
    return transformer.ModelConfig(vocab_size=vocab, hidden_size=16, num_layers=1, num_heads=2,
                                   num_kv_heads=1, head_dim=8, mlp_dim=32)


def test_sft_loss_is_masked_weighted_token_mean():
    config = _tiny_model()
    params = transformer.init_params(config, jax.random.PRNGKey(0))
    tokens = jnp.array([[3, 4, 9, 5, 6, 0], [7, 9, 8, 5, 2, 1]], jnp.int32)
    attention = jnp.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool)
    loss_mask = jnp.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 1, 1]], bool)
    label_ids = (9, 10, 11, 12)
    batch = {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask}

    logits = transformer.forward(config, params, tokens[:, :-1], attention[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -np.take_along_axis(np.asarray(logp), np.asarray(tokens[:, 1:, None]), -1)[..., 0]
    mask = np.asarray(loss_mask[:, 1:], np.float32)
    is_label = np.isin(np.asarray(tokens[:, 1:]), label_ids) * mask  # one label token per row

    # Prompt tokens: attended, not targets, predicted from the token before them.
    in_prompt = np.asarray(attention[:, 1:] & ~loss_mask[:, 1:], np.float32)
    assert in_prompt.sum() == 2  # row 0: token 1 (token 0 is never predicted); row 1: token 3
    for weight, prompt_weight in ((1.0, 0.0), (4.0, 0.0), (1.0, 0.5), (4.0, 2.0)):
        loss_sum, aux = sft_loss_fn(config, label_ids, weight, prompt_weight)(params, batch, None)
        w = mask + (weight - 1.0) * is_label + prompt_weight * in_prompt
        np.testing.assert_allclose(float(loss_sum), (nll * w).sum(), rtol=1e-5)
        np.testing.assert_allclose(float(aux["normalizer"]), w.sum(), rtol=1e-6)
        label_nll_sum, label_count = aux["label_nll"]
        assert float(label_count) == 2.0
        np.testing.assert_allclose(float(label_nll_sum), (nll * is_label).sum(), rtol=1e-5)


# Token ids for the overlap tests: 1 <|query|>, 2 <|item|>, 3 <|answer|>, 4 <|step3|>,
# 5 " yes", 6 " no"; words 7-15.
_OVERLAP = OverlapTask(query_id=1, item_id=2, prompt_end_ids=(3, 4), yes_id=5, no_id=6)


def test_title_query_overlap_marks_title_tokens_found_in_the_query():
    tokens = jnp.array([
        # <q> 7 8 9 <item> 9 10 7 7 <answer> | target 7 (a query word after the prompt end)
        [1, 7, 8, 9, 2, 9, 10, 7, 7, 3, 7, 0],
        # a prompt ending in <|step3|> (the checks order), right padding
        [1, 11, 2, 12, 11, 4, 11, 0, 0, 0, 0, 0],
    ], jnp.int32)
    attention = jnp.array([[1] * 11 + [0], [1] * 7 + [0] * 5], bool)
    in_title, overlaps = title_query_overlap(tokens, attention, _OVERLAP)
    expect_title = np.zeros((2, 12), bool)
    expect_title[0, 5:9] = True
    expect_title[1, 3:5] = True
    np.testing.assert_array_equal(np.asarray(in_title), expect_title)
    expect_overlap = np.zeros((2, 12), bool)
    expect_overlap[0, [5, 7, 8]] = True  # 9 and both 7s occur in the query; 10 does not
    expect_overlap[1, 4] = True  # 11 is the query's word, 12 is not
    np.testing.assert_array_equal(np.asarray(overlaps), expect_overlap)


def test_sft_loss_adds_the_overlap_task_on_title_positions():
    config = _tiny_model()
    params = transformer.init_params(config, jax.random.PRNGKey(1))
    tokens = jnp.array([[1, 7, 8, 2, 8, 9, 3, 12, 13, 0],
                        [1, 10, 2, 11, 10, 10, 3, 14, 15, 0]], jnp.int32)
    attention = jnp.array([[1] * 9 + [0]] * 2, bool)
    loss_mask = jnp.array([[0] * 7 + [1, 1, 0]] * 2, bool)
    batch = {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask}
    label_ids = (12, 13, 14, 15)
    plain_sum, plain_aux = sft_loss_fn(config, label_ids)(params, batch, None)

    logits = np.asarray(transformer.forward(config, params, tokens[:, :-1], attention[:, :-1]))
    margin = logits[..., 5] - logits[..., 6]
    # Title tokens sit at inputs 4-5 of both rows; overlapping: row 0 the 8, row 1 both 10s.
    title = [(0, 4, True), (0, 5, False), (1, 3, False), (1, 4, True), (1, 5, True)]
    bce = [np.logaddexp(0.0, -(1 if hit else -1) * margin[b, t]) for b, t, hit in title]
    right = [(1 if hit else -1) * margin[b, t] > 0 for b, t, hit in title]
    for weight in (0.5, 2.0):
        loss_sum, aux = sft_loss_fn(config, label_ids, overlap_weight=weight,
                                    overlap_task=_OVERLAP)(params, batch, None)
        np.testing.assert_allclose(float(loss_sum), float(plain_sum) + weight * sum(bce),
                                   rtol=1e-5)
        np.testing.assert_allclose(float(aux["normalizer"]),
                                   float(plain_aux["normalizer"]) + weight * len(title))
        correct, count = aux["overlap_accuracy"]
        assert float(count) == len(title) and float(correct) == sum(right)
    with pytest.raises(ValueError, match="overlap_task"):
        sft_loss_fn(config, label_ids, overlap_weight=1.0)


def test_overlap_task_needs_single_token_verdicts():
    class Splitting:
        query_id, item_id, answer_id, step_marker_ids = 1, 2, 3, (4, 5, 6, 7, 8)

        def encode(self, text):
            return [9, 10] if text == " no" else [11]

    with pytest.raises(ValueError, match="'no'"):
        OverlapTask.from_tokenizer(Splitting())


def test_training_orders_validates_the_config_keys():
    config = sft_config.get_config("tiny")
    assert training_orders(config.sft) == "answer_first"
    config.sft.extra_orders = ("think_first",)
    assert training_orders(config.sft) == ("answer_first", "think_first")
    config.sft.extra_orders = ("checks",)
    assert training_orders(config.sft) == ("answer_first", "checks")
    for bad, match in [(("answer_first",), "must not repeat"), (("backwards",), "backwards")]:
        config.sft.extra_orders = bad
        with pytest.raises(ValueError, match=match):
            training_orders(config.sft)
    config.sft.extra_orders = ()
    config.sft.order = "checks"  # training only: never the order a run is evaluated in
    with pytest.raises(ValueError, match="config.sft.order"):
        training_orders(config.sft)


def _tiny_sft_config(order="answer_first"):
    config = sft_config.get_config("tiny")
    config.data.world_overrides = {"sft_size": 320, "rl_size": 64, "dev_size": 32,
                                   "test_size": 24}
    config.model.vocab_size = 1024
    config.model.preset = "tiny"
    config.model.overrides = {"num_layers": 2, "hidden_size": 64, "mlp_dim": 128}
    config.sft.buckets = (160,)  # one compiled train step
    config.optimizer.total_steps = 6
    config.optimizer.warmup_steps = 2
    config.batch.batch_size = 8
    config.log_every = 2
    config.checkpoint.every = 3
    config.sft.order = order
    config.eval.splits = ("test_head", "test_negation")
    config.eval.max_examples = 12
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 32
    return config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHE_JAX_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("order", ["answer_first", "think_first"])
def test_sft_end_to_end_writes_the_run_directory(tmp_path, order):
    workdir = str(tmp_path / "run")
    config = _tiny_sft_config(order)
    if order == "think_first":  # the machine's compute dtype, recorded as what it resolved to
        config.model.dtype = "auto"
    eval_dict = registry.run_config(config, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["dtype"] == (
            precision.resolve_dtype("auto") if order == "think_first" else "float32")

    for name in ("config.json", "metrics.jsonl", "eval.json", "predictions.jsonl",
                 "samples.jsonl", "tb", "checkpoints", "model", "tokenizer", "plots"):
        assert os.path.exists(os.path.join(workdir, name)), name
    rows = metrics_lib.read_metrics(workdir)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learns something in 6 steps
    # experiments/sft.py trains the lexical-overlap task alongside (config.sft.overlap_weight)
    assert config.sft.overlap_weight > 0
    assert all(0.0 <= r["overlap_accuracy"] <= 1.0 for r in rows)

    on_disk = report.read_eval_json(os.path.join(workdir, "eval.json"))
    assert set(on_disk["splits"]) == {"test_head", "test_negation"}
    head = on_disk["splits"]["test_head"]
    assert head["n"] == 12 and 0.0 <= head["accuracy"] <= 1.0
    assert set(head["step_accuracy"]) >= {"query", "item", "all_steps"}
    assert eval_dict["meta"]["order"] == order
    predictions = evaluate.read_predictions(workdir)
    assert len(predictions["test_head"]) == 12
    for row in predictions["test_head"].values():
        assert abs(sum(row["probs"]) - 1.0) < 1e-4
        if order == "answer_first":  # the serving form: argmax of the prefill label softmax
            assert row["pred"] == int(np.argmax(row["probs"]))
    if order == "answer_first":  # and the decoded CoT follows the label that was scored
        samples = [json.loads(line) for line in open(os.path.join(workdir, "samples.jsonl"))]
        assert samples
        for sample in samples:
            assert sample["output"].startswith(f"<|{sample['pred']}|>"), sample

    # The exported model/ reloads with the run's architecture and holds trained weights.
    model_config, params = bootstrap.load_run_model(workdir)
    tokenizer = bootstrap.get_tokenizer(config, workdir, {})
    assert model_config.vocab_size == tokenizer.vocab_size == 1024
    assert model_config.num_layers == 2
    initial = transformer.init_params(model_config, jax.random.PRNGKey(config.seed))
    assert jax.tree.structure(params) == jax.tree.structure(initial)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params),
                                                     jax.tree.leaves(initial)))

    if order == "answer_first":  # the same command again, with more steps: resumes at 6
        config.optimizer.total_steps = 8
        registry.run_config(config, workdir)
        assert [r["step"] for r in metrics_lib.read_metrics(workdir)] == [2, 4, 6, 8]
        with open(os.path.join(workdir, "config.json")) as f:
            assert json.load(f)["optimizer"]["total_steps"] == 8
