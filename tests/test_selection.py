"""Checkpoint selection on dev: the start as a candidate, best/ as a run to start from."""

import json
import os
import shutil
import types

import jax
import numpy as np
import pytest

import tiny_runs
from experiments import registry
from she_jax import run_dir as run_dir_lib
from she_jax.eval import evaluate
from she_jax.train import selection


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sel") / "sft")
    tiny_runs.build_sft_run(path, order="think_first")
    return path


def _selector(sft_dir, workdir, monkeypatch, values):
    os.makedirs(workdir, exist_ok=True)
    if not os.path.isdir(os.path.join(workdir, "tokenizer")):
        shutil.copytree(os.path.join(sft_dir, "tokenizer"), os.path.join(workdir, "tokenizer"))
    scores = iter(values)  # a macro-F1 value, or (value, y_true, y_pred) per call

    def fake_evaluate(*args, **kwargs):
        score = next(scores)
        value, y_true, y_pred = score if isinstance(score, tuple) else (score, [0], [0])
        return ({"dev": {"macro_f1": value}},
                {"dev": {"y_true": np.asarray(y_true), "y_pred": np.asarray(y_pred)}})
    monkeypatch.setattr(evaluate, "evaluate_records", fake_evaluate)
    config = tiny_runs.tiny_sft_config(order="think_first")
    config.eval.update(select_every=1, select_split="dev", select_examples=4)
    model_config, params = run_dir_lib.load_model(sft_dir)
    tokenizer = run_dir_lib.load_tokenizer(sft_dir)
    splits = {"dev": [{"id": str(i)} for i in range(8)]}
    return (selection.DevSelector(config, workdir, model_config, tokenizer, splits,
                                  "think_first"), params)


def test_start_kept_when_every_update_scores_lower_and_resume_keeps_it(sft_dir, tmp_path,
                                                                         monkeypatch):
    workdir = str(tmp_path / "rl")
    selector, start = _selector(sft_dir, workdir, monkeypatch, [0.5, 0.4, 0.5, 0.3])
    assert selector.needs_start() and selector.records == [{"id": str(i)} for i in range(4)]
    for step in range(4):  # step 0 = the start; later steps = perturbed params
        params = jax.tree.map(lambda x, s=step: x + 0.1 * s, start)
        out = selector(types.SimpleNamespace(step=step, params=params))
        assert out["select_best_step"] == 0.0  # a tie (step 2) goes to the earlier
    assert not selector.needs_start()
    _, kept = run_dir_lib.load_model(os.path.join(workdir, "best"))  # checks its tokenizer
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(start)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32))
    with open(os.path.join(workdir, "best", "selection.json")) as f:
        chosen = json.load(f)
    assert chosen["step"] == 0 and [h["step"] for h in chosen["history"]] == [0, 1, 2, 3]
    # A resumed run reads the choice back and does not score its start again.
    again, _ = _selector(sft_dir, workdir, monkeypatch, [])
    assert again.best["step"] == 0 and not again.needs_start()
    # finish() evaluates the kept start, not the last update.
    seen = {}

    def fake_run(config, out_dir, model_config, params, tokenizer, splits, order):
        seen["params"], seen["dir"] = params, out_dir
        return {"splits": {}}
    monkeypatch.setattr(evaluate, "evaluate_run", fake_run)
    again.finish({"dev": []}, last_step=3)
    assert seen["dir"] == os.path.join(workdir, "best")
    for a, b in zip(jax.tree.leaves(seen["params"]), jax.tree.leaves(start)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32))
    with open(os.path.join(workdir, "best", "config.json")) as f:
        assert json.load(f)["checkpoint_selection"] == "best_dev"


def test_select_start_off_scores_no_start(sft_dir, tmp_path, monkeypatch):
    selector, _ = _selector(sft_dir, str(tmp_path / "rl"), monkeypatch, [])
    selector.config.eval.select_start = False
    assert not selector.needs_start()


def _fake_finished(path, best_parts):
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, "eval.json"), "w").write("{}")
    best = os.path.join(path, "best")
    for part in best_parts:
        if part.endswith(".json"):
            os.makedirs(best, exist_ok=True)
            open(os.path.join(best, part), "w").write("{}")
        else:
            os.makedirs(os.path.join(best, part), exist_ok=True)


def test_init_checkpoint_best_starts_from_the_prerequisites_best_dir(tmp_path, monkeypatch):
    parent = str(tmp_path / "stage1")
    _fake_finished(parent, ("eval.json", "config.json", "model", "tokenizer"))
    monkeypatch.setattr(registry, "_build", lambda name, variant, child: parent)
    config = registry.load_config("srpo_stage2", None)
    assert config.init_checkpoint == "best" and config.init_from == "srpo_stage1"
    with config.unlocked():
        config.prerequisites = {}
    registry.build_prerequisites(config)
    assert config.init_dir == os.path.join(parent, "best")
    # 'last' takes the run's own directory; stage 1 starts from SFT's last policy.
    assert registry.load_config("srpo_stage1", None).init_checkpoint == "last"
    last = registry.load_config("srpo_stage2", None)
    with last.unlocked():
        last.init_checkpoint, last.prerequisites = "last", {}
    registry.build_prerequisites(last)
    assert last.init_dir == parent


def test_init_checkpoint_best_without_a_kept_policy_names_the_missing_file(tmp_path,
                                                                           monkeypatch):
    parent = str(tmp_path / "stage1")
    _fake_finished(parent, ("config.json", "model", "tokenizer"))  # best/ never evaluated
    monkeypatch.setattr(registry, "_build", lambda name, variant, child: parent)
    config = registry.load_config("srpo_stage2", None)
    with config.unlocked():
        config.prerequisites = {}
    with pytest.raises(FileNotFoundError, match=r"best/eval.json does not exist.*"
                       r"select_every > 0.*init_checkpoint='last'"):
        registry.build_prerequisites(config)
    bad = registry.load_config("srpo_stage2", None)
    with bad.unlocked():
        bad.init_checkpoint, bad.prerequisites = "newest", {}
    with pytest.raises(ValueError, match=r"config.init_checkpoint='newest'; choose from"):
        registry.build_prerequisites(bad)


def test_significant_selection_needs_a_paired_interval_above_zero(sft_dir, tmp_path,
                                                                  monkeypatch):
    """select_significant: a policy a little better than the start on 200 examples (its
    paired interval straddles 0) does not replace it; a clearly better one does, and the
    next one is compared with that new best, not with the start."""
    from she_jax.eval import resampling

    y_true = np.repeat(np.arange(4), 50)

    def predictions(lo, hi):  # examples lo..hi-1 of each class right, the rest wrong
        pred = (y_true + 1) % 4
        for c in range(4):
            pred[np.flatnonzero(y_true == c)[lo:hi]] = c
        return pred

    def macro_f1(pred):
        data = resampling.SplitData(ids=list(range(200)), label=y_true, pred=pred[None])
        return float(resampling.seed_metrics(np.ones((1, 200)), data)["macro_f1"][0, 0])

    # `slightly` loses 3 of the start's right answers a class and gains 5: a little better
    # on the whole, not with confidence; `back` is below `clearly` on examples both judge.
    start, slightly, clearly, back = (predictions(*span) for span in
                                      ((0, 25), (3, 30), (0, 40), (10, 37)))
    scores = [(macro_f1(p), y_true, p) for p in (start, slightly, clearly, back)]
    selector, params = _selector(sft_dir, str(tmp_path / "rl"), monkeypatch, scores)
    selector.significant = True
    steps = []
    for step in range(4):
        out = selector(types.SimpleNamespace(step=step, params=params))
        steps.append(int(out["select_best_step"]))
    assert scores[1][0] > scores[0][0]  # the plain maximum would have moved at step 1
    assert steps == [0, 0, 2, 2]
    history = selector.best["history"]
    assert history[1]["diff_lo"] < 0 < history[2]["diff_lo"] and history[3]["diff_lo"] < 0
    assert selector.best["pred"] == [int(p) for p in clearly]
