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
    assert "greedy" not in row  # the evaluation answered only 4 of the 8 records
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
    # The 4 dev records the run's evaluation answered (tiny_runs: eval.max_examples 4).
    row = passk.run_pass_at_k(think_run, k=3, splits=["dev"], max_examples=4, batch=3,
                              temperature=0.0)["dev"]
    assert set(row["num_correct"]) <= {0, 3}
    assert row["pass@1"] == pytest.approx(row["pass@3"])
    # Identical samples: the majority vote is that one answer.
    assert row["maj@3"] == pytest.approx(row["pass@1"])
    for step in row["steps"].values():
        assert set(step["num_correct"]) <= {0, 3}
    # Temperature 0 is the evaluation's greedy decoding: the run's predictions.jsonl
    # answers the same records the same way.
    greedy = row["greedy"]
    assert greedy["n"] == 4 and greedy["accuracy"] == pytest.approx(row["pass@1"])
    assert greedy["wrong_sampled_right"] in (0.0, None)
    assert greedy["right_sampled_wrong"] in (0.0, None)


def test_greedy_room_counts_where_the_samples_disagree_with_the_greedy_answer():
    # k = 4: greedy wrong with 3, 2, 0 samples right; greedy right with 1, 4 right.
    room = passk.greedy_room([3, 2, 0, 1, 4], 4, [False, False, False, True, True])
    assert room == {"n": 5, "accuracy": pytest.approx(0.4),
                    "wrong_sampled_right": pytest.approx(1 / 3),
                    "right_sampled_wrong": pytest.approx(1 / 2)}
    assert passk.greedy_room([4], 4, [True])["wrong_sampled_right"] is None
    with pytest.raises(ValueError, match="greedy_right has 1 records, num_correct 2"):
        passk.greedy_room([1, 2], 4, [True])


def test_a_bad_prediction_row_names_the_file_and_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"split": "dev", "id": "a", "pred": 1, "label": 1}\n{"split": "dev"}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:2: not a prediction row"):
        passk._greedy_right(str(tmp_path))
    path.write_text('{"split": "dev", "id": "a", "pred": 1, "label": 1}\n\n'
                    '{"split": "dev", "id": "b", "pred": 0, "label": 2}\n')
    assert passk._greedy_right(str(tmp_path)) == {("dev", "a"): True, ("dev", "b"): False}
    assert passk._greedy_right(str(tmp_path / "elsewhere")) == {}


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
