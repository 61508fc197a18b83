"""The generative step reward model: examples, encoding, AUC, pmapped scoring, the trainer."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import genrm as genrm_config, registry
from she_jax import special_tokens as st
from she_jax.data import cot, sources
from she_jax.data.cot import ParsedCoT
from she_jax.data.shopworld import tokenizer_corpus
from she_jax.models import transformer
from she_jax.rewards import genrm, verifier
from she_jax.tokenizer import train_sentencepiece
from she_jax.train import bootstrap, genrm as genrm_trainer, metrics as metrics_lib

WORLD = {"sft_size": 320, "rl_size": 64, "dev_size": 32, "test_size": 24}
STEP = {name: s for s, name in enumerate(st.STEP_NAMES)}
# The steps each error kind may corrupt.
TARGETS = {"wrong_category": {0, 1}, "wrong_attribute": {0, 1}, "wrong_match": {2, 3},
           "inconsistent_judgment": {4}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    previous = os.environ.get(sources.CACHE_ENV)
    os.environ[sources.CACHE_ENV] = str(cache)
    data = sources.data_config()
    data.world_overrides = WORLD
    splits = sources.load_splits(data)
    # Standalone verdict words make 'yes' and 'no' single pieces of this small vocabulary.
    tokenizer = train_sentencepiece(list(tokenizer_corpus(splits)) + ["yes", "no"] * 200, 600,
                                    tmp_path_factory.mktemp("tok"))
    yield splits, tokenizer
    if previous is None:
        os.environ.pop(sources.CACHE_ENV)
    else:
        os.environ[sources.CACHE_ENV] = previous


def _tiny_model(vocab_size):
    return transformer.ModelConfig.preset("tiny", vocab_size=vocab_size, num_layers=1,
                                          hidden_size=32, num_heads=2, num_kv_heads=1,
                                          head_dim=16, mlp_dim=64)


def _annotated(records):
    return [r for r in records if r.get("annotations")]


def _examples_config(mix, num_gold=0, num_corrupted=60, propagation=0.0):
    return {"num_gold": num_gold, "num_corrupted": num_corrupted, "error_mix": mix,
            "match_error_propagation": propagation}


# ------------------------------------------------------------------------------- examples


@pytest.mark.parametrize("kind", genrm.ERROR_KINDS)
def test_each_error_kind_corrupts_one_intended_step_and_labels_it(world, kind):
    records = _annotated(world[0]["sft"])
    by_id = {r["id"]: r for r in records}
    examples = genrm.build_genrm_examples(records, np.random.default_rng(0),
                                          _examples_config({kind: 1.0}))
    assert len(examples) == 60 and {e.kind for e in examples} == {kind}
    for e in examples:
        record = by_id[e.record_id]
        gold = record["annotations"]
        changed = [STEP[n] for n in st.STEP_NAMES if e.steps[n] != gold[n]]
        assert len(changed) == 1 and changed[0] in TARGETS[kind], (changed, e)
        step = changed[0]
        # Exactly one fact replaced, by a fact with the same key and another value.
        (before,), (after,) = ([f for f in a if f not in b] for a, b in
                               ((gold[st.STEP_NAMES[step]], e.steps[st.STEP_NAMES[step]]),
                                (e.steps[st.STEP_NAMES[step]], gold[st.STEP_NAMES[step]])))
        assert before.split(":")[0] == after.split(":")[0]
        if kind == "wrong_category":
            assert before.startswith("category:")
        expected = [s != step for s in range(5)]
        assert list(e.correct) == expected and all(e.known)
        if kind == "inconsistent_judgment":  # the label token says the same wrong label
            assert e.label == after.split(": ")[1] != record["label"]
        else:
            assert e.label == record["label"]
        # The labels are the offline verifier's (strict) verdicts on the corrupted CoT.
        correct, known = verifier.verify_steps(ParsedCoT(e.steps, e.label, ()), gold,
                                               record["label"], strict=True)
        assert list(correct) == list(e.correct) and known.all()


def test_propagated_match_error_rederives_the_judgment(world):
    records = _annotated(world[0]["sft"])
    by_id = {r["id"]: r for r in records}
    examples = genrm.build_genrm_examples(
        records, np.random.default_rng(1), _examples_config({"wrong_match": 1.0},
                                                            propagation=1.0))
    changed_labels = 0
    for e in examples:
        record = by_id[e.record_id]
        stated = e.steps["judgment"][0].split(": ")[1]
        assert e.label == stated  # the label token follows the judgment
        assert e.correct[4] == (stated == record["label"])
        changed_labels += stated != record["label"]
        correct, _ = verifier.verify_steps(ParsedCoT(e.steps, e.label, ()),
                                           record["annotations"], record["label"], strict=True)
        assert list(correct) == list(e.correct)
    assert 0 < changed_labels < len(examples)  # some flips change the label, some do not


def test_gold_examples_mix_and_rollouts(world):
    records = world[0]["rl"]  # ~30 % annotated: only those are used
    mix = {"wrong_category": 2.0, "wrong_attribute": 1.0, "wrong_match": 1.0}
    prompt = next(r for r in _annotated(records)
                  if r["annotations"]["category_match"] == ["category match: exact"])
    parsed_good = cot.parse_cot(prompt["cot"], "think_first")
    parsed_bad = cot.parse_cot("<|step1|> category: nothing <|step3|> category match: none "
                               "<|L1|>", "think_first")
    rollouts = ([[parsed_good, parsed_bad]], [prompt])
    examples = genrm.build_genrm_examples(
        records, np.random.default_rng(0), _examples_config(mix, num_gold=5, num_corrupted=10),
        rollouts)
    kinds = [e.kind for e in examples]
    assert kinds.count("none") == 5
    # Quotas 5, 2.5, 2.5: the largest remainder (first on ties) gets the spare example.
    assert (kinds.count("wrong_category"), kinds.count("wrong_attribute"),
            kinds.count("wrong_match"), kinds.count("inconsistent_judgment")) == (5, 3, 2, 0)
    assert all(e.correct == (True,) * 5 for e in examples if e.kind == "none")
    assert all(e.record_id in {r["id"] for r in _annotated(records)} for e in examples)
    good, bad = [e for e in examples if e.kind == "rollout"]
    assert good.correct == (True,) * 5 and good.known == (True,) * 5
    # Steps 2, 4, 5 are absent: unlabelled; step 1 states a wrong category, step 3 'none'
    # where the annotation says 'exact'.
    assert bad.known == (True, False, True, False, False)
    assert bad.correct == (False, False, False, False, False)
    with pytest.raises(ValueError, match="error_mix has unknown error kinds"):
        genrm.build_genrm_examples(records, np.random.default_rng(0),
                                   _examples_config({"typo": 1.0}))


def test_examples_round_trip_through_jsonl(world, tmp_path):
    examples = genrm.build_genrm_examples(
        world[0]["rl"], np.random.default_rng(0),
        _examples_config({k: 1.0 for k in genrm.ERROR_KINDS}, num_gold=2, num_corrupted=4))
    path = str(tmp_path / "examples.jsonl")
    genrm.save_examples(path, examples)
    assert genrm.load_examples(path) == examples


# ------------------------------------------------------------------------------- encoding


def test_encode_for_scoring_slots_point_at_answer_tokens(world):
    _, tokenizer = world
    record = _annotated(world[0]["sft"])[0]
    full = dict(record["annotations"])
    partial = {k: v for k, v in full.items() if k not in ("item", "attribute_match")}
    # Steps given out of order are rendered canonically.
    shuffled = dict(reversed(list(full.items())))
    tokens, mask, slots, present = genrm.encode_for_scoring(
        [full, partial, shuffled], [record] * 3, tokenizer, max_len=512,
        labels=[record["label"], None, record["label"]])
    answer = tokenizer.token_id(st.ANSWER)
    assert present.tolist() == [[True] * 5, [True, False, True, False, True], [True] * 5]
    assert (slots[~present] == -1).all()
    for row in range(3):
        at = slots[row][present[row]]
        assert (tokens[row, at] == answer).all() and mask[row, at].all()
        # Exactly the inserted slots: the prompt's own <|answer|> precedes them all.
        prompt_len = len(tokenizer.encode(cot.render_prompt(record["query"],
                                                            record["item_title"])))
        assert sorted(np.flatnonzero(tokens[row] == answer)) == [prompt_len - 1] + sorted(at)
    np.testing.assert_array_equal(tokens[0], tokens[2])
    # Blocks encoded apart concatenate to the encoding of the whole text.
    text = (cot.render_prompt(record["query"], record["item_title"]) + " " + " ".join(
        f"{m} {'; '.join(full[n])} {st.ANSWER}" for m, n in zip(st.STEP_MARKERS, st.STEP_NAMES)))
    text = text.replace(f"{full['judgment'][0]} {st.ANSWER}",
                        f"{full['judgment'][0]} {cot.label_token(record['label'])} {st.ANSWER}")
    assert tokenizer.encode(text) == tokens[0][mask[0]].tolist()
    # A short max_len drops the slots that no longer fit.
    cut = int(slots[0, 2])
    t2, m2, s2, p2 = genrm.encode_for_scoring([full], [record], tokenizer, max_len=cut + 1)
    assert t2.shape[1] == cut + 1 and p2[0].tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(s2[0, :3], slots[0, :3])


def test_verdict_ids_must_be_single_tokens(world):
    _, tokenizer = world
    yes, no = genrm.verdict_ids(tokenizer)
    assert tokenizer.decode([yes]) == "yes" and tokenizer.decode([no]) == "no"

    class OnePieceShort:
        def encode(self, text):
            return [1] if text == "yes" else [2, 3]

    with pytest.raises(ValueError, match="'no' encodes to 2 tokens"):
        genrm.verdict_ids(OnePieceShort())


# ------------------------------------------------------------------------------------ AUC


def test_roc_auc_hand_case_with_ties():
    # Positives 0.9, 0.5, 0.3; negatives 0.5, 0.1. Pairs won: 0.9 > both (2), 0.5 ties 0.5
    # (0.5) and beats 0.1 (1), 0.3 loses to 0.5 and beats 0.1 (1): 4.5 of 6.
    labels = [True, False, True, True, False]
    scores = [0.9, 0.5, 0.5, 0.3, 0.1]
    assert genrm.roc_auc(labels, scores) == pytest.approx(0.75)
    assert genrm.roc_auc([True, False], [0.2, 0.8]) == 0.0
    assert genrm.roc_auc([True, False, True], [0.4, 0.4, 0.4]) == 0.5
    assert genrm.roc_auc([True, True], [0.1, 0.2]) is None


class _FixedScores:
    """A stand-in scorer returning preset P(correct) per example."""

    def __init__(self, probs):
        self.probs, self.offset = np.asarray(probs, np.float32), 0

    def score_steps(self, steps, records, labels):
        out = self.probs[self.offset:self.offset + len(steps)]
        self.offset += len(steps)
        present = np.array([[n in s for n in st.STEP_NAMES] for s in steps])
        return np.where(present, out, 0.0), present


def test_evaluate_genrm_tables_by_step_and_kind():
    steps = {n: ["k: v"] for n in st.STEP_NAMES}
    ex = lambda correct, known, kind, s=steps: genrm.StepExample(
        "q", "t", s, "L4", correct, known, kind)
    t, f = True, False
    examples = [
        ex((t, t, t, t, t), (t,) * 5, "none"),
        ex((f, t, t, t, t), (t,) * 5, "wrong_category"),
        # Step 5 absent (not scored) and step 4 unlabelled.
        ex((t, f, t, f, f), (t, t, t, f, t), "rollout",
           {n: ["k: v"] for n in st.STEP_NAMES[:4]}),
    ]
    probs = [[0.9, 0.8, 0.7, 0.6, 0.4],  # last step judged wrong: one error
             [0.2, 0.9, 0.9, 0.9, 0.9],
             [0.9, 0.6, 0.3, 0.5, 0.5]]
    out = genrm.evaluate_genrm(_FixedScores(probs), examples, batch_size=2)
    # Scored steps: 5 + 5 + 3 = 13, wrong 2; errors: ex0 step 5, ex2 step 2 (0.6 says
    # correct), ex2 step 3 (0.3 says wrong, but it is correct).
    assert out["n"] == 13 and out["n_incorrect"] == 2
    assert out["accuracy"] == pytest.approx(10 / 13)
    assert out["by_kind"]["none"]["accuracy"] == pytest.approx(0.8)
    assert out["by_kind"]["none"]["auc"] is None
    assert out["by_kind"]["wrong_category"]["auc"] == 1.0
    assert out["by_kind"]["rollout"]["n"] == 3
    assert out["by_kind"]["rollout"]["auc"] == pytest.approx(0.5)  # 0.9 > 0.6, 0.3 < 0.6
    assert out["by_step"]["item"]["n"] == 3 and out["by_step"]["judgment"]["n"] == 2
    assert out["by_step"]["query"]["auc"] == 1.0
    assert "kind:rollout" in genrm.format_genrm_eval(out)


# -------------------------------------------------------------------------------- scoring


def test_scores_match_across_device_counts_and_a_direct_forward(world):
    splits, tokenizer = world
    model_config = _tiny_model(tokenizer.vocab_size)
    params = transformer.init_params(model_config, jax.random.PRNGKey(3))
    records = _annotated(splits["sft"])[:3]
    good = cot.parse_cot(records[0]["cot"], "think_first")
    partial = cot.parse_cot("<|L2|> <|step1|> category: x <|step3|> category match: none",
                            "answer_first")
    parsed = [[good, partial], [good, good], [partial, partial]]  # B=3, G=2: M=6 rows
    devices = jax.local_devices()
    assert len(devices) == 8
    one = genrm.StepRewardModel(model_config, params, tokenizer, devices=devices[:1])
    eight = genrm.StepRewardModel(model_config, params, tokenizer, devices=devices)
    probs1, present1 = one.score(parsed, records)
    probs8, present8 = eight.score(parsed, records)
    assert probs1.shape == (3, 2, 5) and probs1.dtype == np.float32
    np.testing.assert_array_equal(present1, present8)
    np.testing.assert_allclose(probs1, probs8, rtol=1e-5, atol=1e-6)
    assert present1[0, 1].tolist() == [True, False, True, False, False]
    assert (probs1[~present1] == 0).all() and (probs1[present1] > 0).all()

    flat = [p for row in parsed for p in row]
    tokens, mask, slots, present = genrm.encode_for_scoring(
        [p.steps for p in flat], [r for r in records for _ in range(2)], tokenizer, 256,
        [p.label for p in flat])
    direct = np.exp(genrm.verdict_log_probs(model_config, params, tokens, mask, slots,
                                            genrm.verdict_ids(tokenizer))[..., 0])
    np.testing.assert_allclose(probs8.reshape(6, 5)[present], np.asarray(direct)[present],
                               rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------- trainer


def test_example_batches_are_a_function_of_the_index(world):
    splits, tokenizer = world
    examples = genrm.build_genrm_examples(
        splits["sft"], np.random.default_rng(0),
        _examples_config({k: 1.0 for k in genrm.ERROR_KINDS}, num_gold=4, num_corrupted=8))
    make = lambda: genrm_trainer.ExampleBatches(examples, tokenizer, batch_size=4,
                                                buckets=(48, 96, 160), seed=0)
    a, b = make(), make()
    assert a.batches_per_epoch == 3
    seen = []
    for i in range(4):
        x, y = a(i), b(i)
        assert all(np.array_equal(x[k], y[k]) for k in x)
        assert x["tokens"].shape[1] in (48, 96, 160)
        assert x["tokens"].shape[1] >= x["attention_mask"].sum(axis=1).max()
        seen.append(x["tokens"][:, :10])
    assert not np.array_equal(seen[0], seen[3])  # epoch 2 is reshuffled
    # An epoch visits every example once: its slot labels add up.
    epoch = [a(i) for i in range(3)]
    assert sum(int((x["verdicts"] * x["slot_weight"]).sum()) for x in epoch) == 8


def test_balanced_verdicts_give_each_class_half_the_weight(world):
    splits, tokenizer = world
    examples = genrm.build_genrm_examples(
        splits["sft"], np.random.default_rng(0),
        _examples_config({k: 1.0 for k in genrm.ERROR_KINDS}, num_gold=4, num_corrupted=8))
    plain = genrm_trainer.ExampleBatches(examples, tokenizer, batch_size=4,
                                         buckets=(160,), seed=0)
    balanced = genrm_trainer.ExampleBatches(examples, tokenizer, batch_size=4,
                                            buckets=(160,), seed=0, balance_verdicts=True)
    wrong = plain.verdicts == 1
    labelled = plain.weight > 0
    assert 0 < (wrong & labelled).sum() < (~wrong & labelled).sum()  # "yes" is the majority
    assert balanced.weight[wrong].sum() == pytest.approx(balanced.weight[~wrong].sum())
    assert balanced.weight.sum() == pytest.approx(labelled.sum())
    assert np.array_equal(balanced.weight > 0, labelled)  # the same slots are labelled
    assert balanced.weight[wrong & labelled].min() > 1 > balanced.weight[~wrong & labelled].max()
    one_class = np.ones((3, 5), np.float32)
    assert np.array_equal(genrm_trainer.balanced_slot_weights(one_class, np.zeros((3, 5))),
                          one_class)


def test_loss_metrics_with_balanced_weights(world, monkeypatch):
    """With non-unit slot weights the logged verdict accuracy and incorrect-step recall are
    weighted means (the recall at most 1). The model's verdicts are fixed here: every
    other labelled slot is judged wrong."""
    splits, tokenizer = world
    examples = genrm.build_genrm_examples(
        splits["sft"], np.random.default_rng(0),
        _examples_config({k: 1.0 for k in genrm.ERROR_KINDS}, num_gold=4, num_corrupted=8))
    batches = genrm_trainer.ExampleBatches(examples, tokenizer, batch_size=8, buckets=(160,),
                                           seed=0, balance_verdicts=True)
    batch = {k: jnp.asarray(v) for k, v in batches(0).items()}
    said = (np.arange(8 * 5).reshape(8, 5) % 2).astype(np.int32)  # 1 = "no" (wrong step)
    fixed = jnp.log(jnp.where(jax.nn.one_hot(said, 2) > 0, 0.9, 0.1))
    monkeypatch.setattr(genrm_trainer.genrm_lib, "verdict_log_probs",
                        lambda *args, **kwargs: fixed)
    _, aux = genrm_trainer.genrm_loss_fn(_tiny_model(tokenizer.vocab_size),
                                         (0, 1))(None, batch, None)
    w, verdicts = np.asarray(batch["slot_weight"]), np.asarray(batch["verdicts"])
    wrong = (verdicts == 1) & (w > 0)
    assert w[wrong].min() > 1 and (said[wrong] == 1).any()  # the weights are in play
    num, den = aux["incorrect_recall"]
    assert float(num) / float(den) == pytest.approx(
        (w * (said == 1) * wrong).sum() / (w * wrong).sum(), rel=1e-5)
    assert float(aux["verdict_accuracy"]) / float(aux["normalizer"]) == pytest.approx(
        (w * (said == verdicts)).sum() / w.sum(), rel=1e-5)


def _tiny_sft_run(world, run_dir):
    """A stand-in for the finished SFT run: a random tiny model, the tokenizer, its order."""
    _, tokenizer = world
    model_config = _tiny_model(tokenizer.vocab_size)
    model_config = transformer.ModelConfig.from_dict({**model_config.to_dict(),
                                                      "hidden_size": 64, "mlp_dim": 128})
    tokenizer.save(os.path.join(run_dir, bootstrap.TOKENIZER_DIR))  # export_model reads it
    bootstrap.export_model(run_dir, model_config,
                           transformer.init_params(model_config, jax.random.PRNGKey(0)))
    with open(os.path.join(run_dir, "eval.json"), "w") as f:  # where the order is read
        json.dump({"meta": {"order": "think_first"}}, f)


def test_genrm_trainer_overfits_a_handful_of_examples(world, tmp_path):
    init_dir, workdir = str(tmp_path / "sft"), str(tmp_path / "genrm")
    _tiny_sft_run(world, init_dir)
    config = genrm_config.get_config("tiny")
    config.init_dir = init_dir
    config.data.world_overrides = WORLD
    g = config.genrm
    g.num_gold, g.num_corrupted = 4, 12
    # Rollouts for training only (the held-out share rounds to 0): one sampler compile.
    g.rollout_prompts, g.rollout_samples, g.rollout_max_new_tokens = 2, 2, 16
    g.rollout_batch_size = 2
    g.heldout_records, g.heldout_scale = 8, 0.25
    g.buckets = (160,)  # one compiled train step
    config.batch.batch_size = 8
    config.optimizer.lr = 1e-2
    config.optimizer.warmup_steps = 2
    config.optimizer.total_steps = 40
    config.log_every = 10
    config.checkpoint.every = 40

    eval_dict = registry.run_config(config, workdir)

    for name in ("config.json", "metrics.jsonl", "model", "tokenizer", "checkpoints",
                 genrm_trainer.TRAIN_EXAMPLES_FILE, genrm_trainer.HELDOUT_EXAMPLES_FILE):
        assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "eval.json")) as f:
        on_disk = json.load(f)
    with open(os.path.join(workdir, genrm_trainer.EVAL_FILE)) as f:
        assert json.load(f) == on_disk
    assert on_disk["n"] == eval_dict["n"] > 0 and 0 <= on_disk["accuracy"] <= 1
    assert set(on_disk["by_step"]) == set(st.STEP_NAMES)
    assert on_disk["meta"]["train_examples"]["none"] == 4
    assert on_disk["meta"]["heldout_examples"]["none"] == 1

    rows = metrics_lib.read_metrics(workdir)
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss"] < rows[0]["loss"]
    # Overfit: the trained model separates right from wrong steps of its training
    # examples, which the initial (SFT stand-in) model does not.
    train_examples = genrm.load_examples(os.path.join(workdir,
                                                      genrm_trainer.TRAIN_EXAMPLES_FILE))
    assert {e.kind for e in train_examples} >= set(genrm.ERROR_KINDS) | {"none"}
    before = genrm.evaluate_genrm(genrm.StepRewardModel.load(init_dir), train_examples)
    after = genrm.evaluate_genrm(genrm.StepRewardModel.load(workdir), train_examples)
    assert after["accuracy"] > max(before["accuracy"], 0.9)
    assert after["auc"] > 0.9 > before["auc"]
