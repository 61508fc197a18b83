"""Rejection-sampled chains (she_jax.rl.rejection) and the SFT stage that trains on them."""

import json
import logging
import os
import types

import pytest
import tiny_runs

from experiments import registry
from she_jax import run_dir
from she_jax.data import cot, readers, sources
from she_jax.rl import rejection


@pytest.fixture(scope="module")
def think_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("rejection") / "policy")
    tiny_runs.build_sft_run(workdir, order="think_first")
    return workdir


@pytest.fixture(scope="module")
def rl_records(think_run):
    return sources.load_splits(run_dir.load_config(think_run).data)["rl"]


def _chain(record, annotations, label=None):
    return cot.parse_cot(cot.render_cot(annotations, label or record["label"], "think_first"),
                         "think_first")


def _other_label(label):
    return next(x for x in ("L4", "L3", "L2", "L1") if x != label)


def test_the_first_right_valid_sample_is_kept_with_its_own_steps(rl_records):
    annotated = [r for r in rl_records if cot.has_gold_cot(r)]
    a, b, c = annotated[:3]
    sampled_steps = annotated[3]["annotations"]  # steps unlike a's gold ones
    parsed = [
        # a: wrong label first, then two right ones: the first right one is kept.
        [_chain(a, a["annotations"], _other_label(a["label"])), _chain(a, sampled_steps),
         _chain(a, a["annotations"])],
        # b: right label but the text cut short (no valid format): nothing kept.
        [cot.parse_cot(cot.render_cot(b["annotations"], b["label"], "think_first")[:40],
                       "think_first")],
        # c: every sample wrong.
        [_chain(c, c["annotations"], _other_label(c["label"]))] * 2,
    ]
    assert not parsed[1][0].format_valid
    kept = rejection.keep_chains(parsed, [a, b, c], "first")
    assert kept[1] is None and kept[2] is None
    assert kept[0]["annotations"] == {k: list(v) for k, v in sampled_steps.items()}
    assert kept[0]["annotations"] != a["annotations"]
    assert {k: kept[0][k] for k in ("id", "query", "item_title", "label")} == {
        k: a[k] for k in ("id", "query", "item_title", "label")}
    # The kept record renders as a think-first target ending in the gold label.
    assert cot.parse_cot(cot.render_target(kept[0]), "think_first").label == a["label"]
    with pytest.raises(ValueError, match="2 rows of samples for 3 records"):
        rejection.keep_chains(parsed[:2], [a, b, c])
    with pytest.raises(ValueError, match="select='best'"):
        rejection.keep_chains(parsed, [a, b, c], "best")


def test_consensus_keeps_the_right_chain_agreeing_most_with_the_others(rl_records):
    a = next(r for r in rl_records if cot.has_gold_cot(r))
    gold = a["annotations"]
    odd_query = {**gold, "query": ["category: kites"]}
    odd_both = {**gold, "query": ["category: kites"], "item": ["brand: nobody"]}
    wrong = _chain(a, gold, _other_label(a["label"]))
    # Right chains: two with an odd query step (one also an odd item step), then two with
    # the gold steps; the wrong-label samples (gold steps) do not vote.
    row = [wrong, _chain(a, odd_both), _chain(a, odd_query), wrong, wrong, wrong,
           _chain(a, gold), _chain(a, gold)]
    # Modal steps among the right four: query tied 2-2 (the first seen, odd, wins), item
    # gold 3-1: the odd-query, gold-item chain agrees on every step.
    assert rejection.consensus_chain([p for p in row if p.label == a["label"]]).steps == (
        _chain(a, odd_query).steps)
    kept = rejection.keep_chains([row], [a])[0]
    assert kept["annotations"] == {k: list(v) for k, v in odd_query.items()}
    assert rejection.keep_chains([row], [a], "first")[0]["annotations"] == {
        k: list(v) for k, v in odd_both.items()}
    # With one more gold chain the gold query step is the mode, and the first gold chain
    # agrees everywhere; facts compare after normalisation (case, order).
    shuffled = {**gold, "item": [f.upper() for f in reversed(gold["item"])]}
    row += [_chain(a, shuffled)]
    kept = rejection.keep_chains([row], [a])[0]
    assert kept["annotations"] == {k: list(v) for k, v in gold.items()}


def test_a_kept_record_reads_back_from_jsonl_unchanged(rl_records, tmp_path):
    record = next(r for r in rl_records if cot.has_gold_cot(r))
    kept = rejection.keep_chains([[_chain(record, record["annotations"])]], [record])
    path = str(tmp_path / "chains.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps(kept[0]) + "\n")
    assert readers.read_jsonl(path).records == kept


def test_sampling_from_a_real_policy_counts_its_samples(think_run, rl_records):
    model_config, params = run_dir.load_model(think_run)
    tokenizer = run_dir.load_tokenizer(think_run)
    records = rl_records[:5]
    kept, counts = rejection.sample_chains(model_config, params, tokenizer, records,
                                           "think_first", samples=3, max_new_tokens=24,
                                           batch=4, seed=1)
    assert counts["records"] == 5 and counts["samples"] == 15
    assert 0 <= counts["right"] <= 15 and 0 <= counts["valid"] <= 15
    assert counts["kept"] == len(kept) <= 5
    assert sum(counts["gold_label_mix"].values()) == pytest.approx(1.0)
    ids = [r["id"] for r in records]
    assert all(r["id"] in ids for r in kept)
    with pytest.raises(ValueError, match="samples=0"):
        rejection.sample_chains(model_config, params, tokenizer, records, "think_first",
                                samples=0, max_new_tokens=8)


def _rft_config(policy):
    config = tiny_runs.tiny_sft_config("think_first")
    config.sft.train_split = "rl"
    config.sft.rft.samples = 2
    config.sft.rft.policy_dir = policy
    config.sft.rft.batch = 8
    config.init_dir = policy
    config.optimizer.total_steps = 2
    return config


def test_sft_trains_the_gold_records_and_the_kept_chains(think_run, rl_records, tmp_path,
                                                         monkeypatch, caplog):
    # The sampler answers every label-only record with its gold label and the steps of an
    # annotated record, its judgment step made to agree with the label: every one is kept.
    some = next(r for r in rl_records if cot.has_gold_cot(r))["annotations"]
    steps = {label: {**some, "judgment": [f"label: {label}"]}
             for label in ("L4", "L3", "L2", "L1")}
    calls = []

    def oracle(sampler, params, records, tokenizer, rng, *, group_size, **kw):
        calls.append(len(records))
        return types.SimpleNamespace(parsed=[[_chain(r, steps[r["label"]])] * group_size
                                             for r in records])

    monkeypatch.setattr(rejection.rollout_lib, "generate_rollouts", oracle)
    label_only = [r for r in rl_records if not cot.has_gold_cot(r)]
    gold = len(rl_records) - len(label_only)
    assert label_only and gold
    workdir = str(tmp_path / "rft")
    with caplog.at_level(logging.INFO):
        registry.run_config(_rft_config(think_run), workdir)
    assert f"sft: {gold} gold records + {len(label_only)} rejection-sampled chains" in (
        caplog.text)
    assert os.path.exists(os.path.join(workdir, "eval.json"))
    with open(os.path.join(workdir, rejection.STATS_FILE)) as f:
        saved = json.load(f)
    assert saved["counts"]["records"] == saved["counts"]["kept"] == len(label_only)
    assert saved["counts"]["samples"] == 2 * len(label_only)
    assert saved["settings"]["policy_dir"] == os.path.abspath(think_run)
    chains = readers.read_jsonl(os.path.join(workdir, rejection.CHAINS_FILE)).records
    assert [r["id"] for r in chains] == [r["id"] for r in label_only]
    assert all(r["annotations"] == steps[r["label"]] for r in chains)

    # A resumed run reads the chains back instead of sampling again.
    sampled = len(calls)
    config = _rft_config(think_run)
    again = rejection.chains_for_sft(config, workdir, rl_records)
    assert again == chains and len(calls) == sampled
    # Other settings against the same files: a clear error naming the file.
    config.sft.rft.samples = 3
    with pytest.raises(ValueError, match="rft.json: its chains were sampled with"):
        rejection.chains_for_sft(config, workdir, rl_records)


def test_rejection_settings_are_checked(think_run, rl_records, tmp_path):
    config = _rft_config(think_run)
    config.sft.rft.temperature = 0.0
    with pytest.raises(ValueError, match="config.sft.rft.temperature=0.0"):
        rejection.chains_for_sft(config, str(tmp_path), rl_records)
    config = _rft_config("")
    config.init_dir = None
    with pytest.raises(ValueError, match="config.sft.rft.policy_dir"):
        rejection.chains_for_sft(config, str(tmp_path), rl_records)
    annotated = [r for r in rl_records if cot.has_gold_cot(r)]
    with pytest.raises(ValueError, match="has no record without a gold CoT"):
        rejection.chains_for_sft(_rft_config(think_run), str(tmp_path), annotated)


def test_the_rft_config_builds_its_policy_only_when_it_samples():
    from experiments import sft_think_rft
    from she_jax.train import sft

    config = sft_think_rft.get_config("tiny")
    assert config.init_from == "sft_think_wide" and config.sft.train_split == "rl"
    assert sft.needs_prerequisite(config, "sft_think_rl")
    config.sft.rft.samples = 0
    assert not sft.needs_prerequisite(config, "sft_think_rl")


def test_the_readme_rejection_flags_parse_as_written():
    from test_sources import ROOT, parse_flags

    config = parse_flags(os.path.join(ROOT, "experiments", "sft_think_rl.py"), [
        "--config.sft.rft.samples=8", "--config.sft.rft.policy_dir=runs/sft_think_rl",
        "--config.sft.rft.select=first"])
    assert config.sft.rft.samples == 8 and config.sft.rft.select == "first"
    assert config.sft.rft.policy_dir == "runs/sft_think_rl"
