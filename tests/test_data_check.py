"""she_jax.data.checks: every split a run uses is checked against its buckets and the
model's length at start, and config.data.overlong decides (error / skip / truncate)."""

import json
import logging
import os
import shutil

import pytest

from experiments import sft as sft_experiment
from she_jax.data import loader, shopworld
from she_jax.eval import evaluate
from she_jax.tokenizer import train_sentencepiece
from she_jax.data import checks as data_check
from she_jax.train import bootstrap
from she_jax.train.sft import training_orders

SMALL_WORLD = dict(sft_size=96, rl_size=32, dev_size=16, test_size=8)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHE_JAX_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def world_splits():
    return shopworld.generate_splits(shopworld.WorldConfig.preset("tiny", **SMALL_WORLD))


@pytest.fixture(scope="module")
def tokenizer_dir(world_splits, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_sentencepiece(shopworld.tokenizer_corpus(world_splits), 512, path)
    return path


def _long_row(record):
    """A dev row whose prompt is far over the largest default prompt bucket (128)."""
    return dict(record, id="long-one", item_title=" ".join([record["item_title"]] * 12))


def _jsonl_run(tmp_path, world_splits, tokenizer_dir, *overrides):
    """An SFT config on JSONL files (sft and dev; dev holds one overlong row at line 3) and
    its workdir, which already holds the tokenizer (as a resumed run's does)."""
    paths = {}
    for split, records in (("sft", world_splits["sft"]),
                           ("dev", world_splits["dev"][:2] + [_long_row(world_splits["dev"][2])]
                            + world_splits["dev"][3:])):
        paths[split] = tmp_path / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in records))
    config = sft_experiment.get_config("tiny")
    config.data.source = "jsonl"
    config.data.files.sft = str(paths["sft"])
    config.data.files.dev = str(paths["dev"])
    config.model.vocab_size = 512
    config.model.overrides = {"num_layers": 1, "hidden_size": 32, "mlp_dim": 64}
    config.sft.buckets = (512,)  # room for the small test vocabulary's longer sequences
    config.eval.splits = ("dev",)
    for key, value in overrides:
        section, name = key.split(".")
        config[section][name] = value
    workdir = tmp_path / "run"
    shutil.copytree(tokenizer_dir, workdir / bootstrap.TOKENIZER_DIR)
    return config, str(workdir), str(paths["dev"])


def test_an_overlong_dev_row_stops_the_run_before_the_first_step(tmp_path, world_splits,
                                                                  tokenizer_dir):
    # Issue 20 item 6: this row used to fail the evaluation after training had finished.
    config, workdir, dev_path = _jsonl_run(tmp_path, world_splits, tokenizer_dir)
    with pytest.raises(loader.OverlongError) as info:
        bootstrap.start_run(config, workdir)
    message = str(info.value)
    assert message.startswith(f"split 'dev' (config.data.files.dev = {dev_path}), evaluation "
                              "prompts: 1 record(s) too long; first: record 2 (id 'long-one') "
                              "has ")
    assert "tokens, more than the 128 allowed" in message
    assert ("Fix: add a bigger bucket to config.eval.prompt_buckets (largest now 128), or set "
            "config.data.overlong=skip") in message
    checkpoints = os.path.join(workdir, "checkpoints")
    saved = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    assert not [name for name in saved if name.isdigit()]  # no step was taken or saved
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))


def test_skip_leaves_the_row_out_and_logs_the_count(tmp_path, world_splits, tokenizer_dir,
                                                    caplog):
    config, workdir, _ = _jsonl_run(tmp_path, world_splits, tokenizer_dir,
                                    ("data.overlong", "skip"))
    with caplog.at_level(logging.WARNING):
        splits, *_ = bootstrap.start_run(config, workdir)
    assert [r["id"] for r in splits["dev"]] == [r["id"] for r in world_splits["dev"]
                                                if r["id"] != world_splits["dev"][2]["id"]]
    assert "skipped 1 record(s) over 128 tokens (config.data.overlong=skip); first ids: " \
           "['long-one']" in caplog.text
    assert len(splits["sft"]) == len(world_splits["sft"])


def test_truncate_cuts_the_title_to_the_limit(tmp_path, world_splits, tokenizer_dir):
    config, workdir, _ = _jsonl_run(tmp_path, world_splits, tokenizer_dir,
                                    ("data.overlong", "truncate"))
    splits, tokenizer, _, _ = bootstrap.start_run(config, workdir)
    cut = splits["dev"][2]
    original = _long_row(world_splits["dev"][2])
    assert cut["id"] == "long-one" and cut["query"] == original["query"]
    assert original["item_title"].startswith(cut["item_title"])
    assert len(cut["item_title"]) < len(original["item_title"])
    assert loader.record_lengths([cut], tokenizer)[0] <= 128
    assert splits["dev"][:2] + splits["dev"][3:] == world_splits["dev"][:2] + world_splits["dev"][3:]


def test_a_bigger_bucket_is_the_other_fix_and_reaches_the_evaluator(tmp_path, world_splits,
                                                                     tokenizer_dir, monkeypatch):
    config, workdir, _ = _jsonl_run(tmp_path, world_splits, tokenizer_dir,
                                    ("eval.prompt_buckets", (32, 64, 128, 1024)))
    splits, tokenizer, model_config, params = bootstrap.start_run(config, workdir)
    assert splits["dev"][2]["id"] == "long-one"  # kept whole
    seen = {}

    def capture(records, tokenizer, **kwargs):
        seen.update(kwargs)
        raise StopIteration  # the evaluator's batches are all this test needs to see

    monkeypatch.setattr(evaluate.loader, "prompt_dataset", capture)
    with pytest.raises(StopIteration):
        evaluate.predict_split(model_config, params, tokenizer, splits["dev"], "answer_first",
                               config.eval)
    assert seen["buckets"] == (32, 64, 128, 1024)


def test_sft_sequences_are_checked_against_the_sft_buckets(tmp_path, world_splits,
                                                           tokenizer_dir):
    config, workdir, _ = _jsonl_run(tmp_path, world_splits, tokenizer_dir,
                                    ("sft.buckets", (16,)), ("eval.splits", ()))
    with pytest.raises(loader.OverlongError,
                       match=r"^split 'sft' .*SFT training sequences: .* Fix: add a bigger "
                             r"bucket to config.sft.buckets \(largest now 16\)"):
        bootstrap.start_run(config, workdir)


@pytest.mark.parametrize("name", ["sft", "sft_think", "dpo", "grpo", "srpo_stage3", "agrl",
                                  "genrm"])
def test_each_trainer_checks_the_splits_it_uses(name):
    config = __import__(f"experiments.{name}", fromlist=["get_config"]).get_config("tiny")
    max_seq_len = 300
    limits = {(l.split, l.use): l for l in data_check.length_limits(config, max_seq_len)}
    eval_limit = min(max(config.eval.prompt_buckets), max_seq_len - config.eval.max_new_tokens)
    expected = {}
    if config.trainer == "sft":
        expected[(config.sft.train_split, "SFT training sequences")] = min(
            max(config.sft.buckets), max_seq_len)
    elif config.trainer == "dpo":
        expected[(config.dpo.train_split, "DPO sampling prompts")] = \
            max_seq_len - config.dpo.max_new_tokens
    elif config.trainer == "genrm":
        for split in (config.genrm.train_split, config.genrm.heldout_split):
            expected[(split, "generative reward model rollout prompts")] = min(
                max(loader.DEFAULT_PROMPT_BUCKETS),
                max_seq_len - config.genrm.rollout_max_new_tokens)
    else:
        expected[(config.rl.train_split, "RL rollout prompts")] = \
            max_seq_len - config.rl.max_new_tokens
    if config.trainer != "genrm":  # genrm runs no evaluation of splits
        expected.update({(split, "evaluation prompts"): eval_limit
                         for split in config.eval.splits})
    assert {key: limit.max_len for key, limit in limits.items()} == expected
    if config.trainer == "sft":  # every training order is measured
        assert limits[(config.sft.train_split, "SFT training sequences")].order == \
            training_orders(config.sft)
    # A standalone re-evaluation checks only the evaluation's splits.
    assert {l.use for l in data_check.length_limits(config, max_seq_len, training=False)} == {
        "evaluation prompts"}


def test_an_unknown_overlong_choice_is_named(tmp_path, world_splits, tokenizer_dir):
    config, workdir, _ = _jsonl_run(tmp_path, world_splits, tokenizer_dir,
                                    ("data.overlong", "cut"))
    with pytest.raises(ValueError, match=r"config.data.overlong: 'cut' is not one of"):
        bootstrap.start_run(config, workdir)
