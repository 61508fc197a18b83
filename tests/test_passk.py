"""python -m she_jax.eval.passk on a tiny finished run."""

import json
import os

import numpy as np
import pytest

import tiny_runs
from she_jax.eval import passk


@pytest.fixture(scope="module")
def think_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("passk") / "sft")
    tiny_runs.build_sft_run(workdir, order="think_first")
    return workdir


def test_pass_at_k_from_the_sampled_counts(think_run):
    result = passk.run_pass_at_k(think_run, k=4, splits=["dev"], max_examples=8, batch=4)
    row = result["dev"]
    counts = np.array(row["num_correct"])
    assert row["n"] == 8 and counts.shape == (8,) and ((0 <= counts) & (counts <= 4)).all()
    assert row["pass@1"] == pytest.approx(counts.mean() / 4)
    assert row["pass@4"] == pytest.approx((counts > 0).mean())
    values = [row[f"pass@{j}"] for j in range(1, 5)]
    assert values == sorted(values)
    assert sum(row["sampled_label_mix"].values()) == pytest.approx(1.0)
    # Per record, the k samples' labels (L4, L3, L2, L1, none); the gold one's count is
    # the number right, and the pooled votes are the sampled mix.
    votes = np.array(row["votes"])
    assert votes.shape == (8, 5) and (votes.sum(axis=1) == 4).all()
    gold = [["L4", "L3", "L2", "L1"].index(r) for r in _dev_labels(think_run, 8)]
    assert votes[np.arange(8), gold].tolist() == row["num_correct"]
    assert votes[:, 2].sum() / 32 == pytest.approx(row["sampled_label_mix"]["L2"])
    assert len(row["ids"]) == 8
    assert sum(row["gold_label_mix"].values()) == pytest.approx(1.0)
    with open(os.path.join(think_run, passk.OUTPUT_FILE)) as f:
        assert json.load(f)["splits"]["dev"]["num_correct"] == row["num_correct"]
    # Per step: every dev record is annotated; a right judgment step needs the right label.
    assert list(row["steps"]) == list(passk.STEP_NAMES)
    for name, step in row["steps"].items():
        step_counts = np.array(step["num_correct"])
        assert step["n"] == 8 and ((0 <= step_counts) & (step_counts <= 4)).all()
        assert step["pass@1"] == pytest.approx(step_counts.mean() / 4)
        assert step["pass@4"] == pytest.approx((step_counts > 0).mean())
    assert (np.array(row["steps"]["judgment"]["num_correct"]) <= counts).all()


def _dev_labels(workdir, n):
    from she_jax import run_dir
    from she_jax.data import sources
    return [r["label"] for r in sources.load_splits(run_dir.load_config(workdir).data)["dev"][:n]]


def test_greedy_samples_are_all_alike(think_run):
    row = passk.run_pass_at_k(think_run, k=3, splits=["dev"], max_examples=6, batch=3,
                              temperature=0.0)["dev"]
    assert set(row["num_correct"]) <= {0, 3}
    assert row["pass@1"] == pytest.approx(row["pass@3"])
    # Identical samples: the majority vote is that one answer.
    assert row["maj@3"] == pytest.approx(row["pass@1"])
    for step in row["steps"].values():
        assert set(step["num_correct"]) <= {0, 3}


def test_step_pass_at_k_leaves_out_unannotated_records():
    counts = np.array([[2, -1], [0, -1], [4, -1]])
    steps = passk.step_pass_at_k(np.pad(counts, ((0, 0), (0, 3)), constant_values=-1), 4)
    first = steps[passk.STEP_NAMES[0]]
    assert first["n"] == 3 and first["num_correct"] == [2, 0, 4]
    assert first["pass@1"] == pytest.approx(6 / 12)
    assert first["pass@4"] == pytest.approx(2 / 3)
    assert all(steps[name] == {"n": 0, "pass@1": None, "pass@4": None, "num_correct": []}
               for name in passk.STEP_NAMES[1:])


def test_command_line_requires_a_workdir(capsys):
    assert passk.main(["passk"]) == 2
    assert "--workdir" in capsys.readouterr().err
