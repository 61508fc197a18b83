"""she_jax.data.resample: the label drawn independent of the query type (label shift), and
its use by SFT (config.sft.label_independent_of)."""

import collections

import numpy as np
import pytest

from she_jax.data import resample
from she_jax.train import sft


def _records():
    """qa: 75 % L4, 5 % L2; alt: half L2; cat: never L2. Overall 50 / 5 / 36 / 9 (of 1000)."""
    spec = [("qa", "L4", 300), ("qa", "L3", 30), ("qa", "L2", 20), ("qa", "L1", 50),
            ("alt", "L4", 150), ("alt", "L3", 10), ("alt", "L2", 340), ("alt", "L1", 20),
            ("cat", "L4", 50), ("cat", "L3", 10), ("cat", "L1", 20)]
    out = []
    for qtype, label, n in spec:
        out += [{"id": f"{qtype}-{label}-{i}", "label": label, "query_type": qtype}
                for i in range(n)]
    return out


def _mix(records, qtype):
    counts = collections.Counter(r["label"] for r in records if r["query_type"] == qtype)
    n = sum(counts.values())
    return n, np.array([counts[label] / n for label in ("L4", "L3", "L2", "L1")])


def test_classes_give_every_type_the_overall_mix():
    records = _records()
    members, probs = resample.label_independent_classes(records, ("query_type",))
    assert probs.sum() == pytest.approx(1.0) and len(members) == 11  # cat has no L2 class
    for idx in members:  # each class is one (type, label)
        assert len({(records[i]["query_type"], records[i]["label"]) for i in idx}) == 1
    by_type = collections.defaultdict(lambda: np.zeros(4))
    for idx, p in zip(members, probs):
        r = records[idx[0]]
        by_type[r["query_type"]][("L4", "L3", "L2", "L1").index(r["label"])] += p
    overall = np.array([500, 50, 360, 90]) / 1000
    assert by_type["qa"].sum() == pytest.approx(0.4)
    np.testing.assert_allclose(by_type["qa"] / 0.4, overall)
    np.testing.assert_allclose(by_type["alt"] / 0.52, overall)
    np.testing.assert_allclose(by_type["cat"] / 0.08, [0.5 / 0.64, 0.05 / 0.64, 0, 0.09 / 0.64])
    # power 1: every label alike within each type.
    _, flat = resample.label_independent_classes(records, ("query_type",), power=1.0)
    assert flat[0] == pytest.approx(0.4 / 4)


def test_resample_keeps_the_size_and_moves_each_type_to_the_overall_mix():
    records = _records()
    out = resample.resample_label_independent(records, ("query_type",), seed=0)
    assert len(out) == len(records)
    n_qa, qa = _mix(out, "qa")
    assert n_qa == 400  # the type keeps its share, exactly
    np.testing.assert_allclose(qa, [0.5, 0.05, 0.36, 0.09], atol=0.003)
    _, alt = _mix(out, "alt")
    np.testing.assert_allclose(alt, [0.5, 0.05, 0.36, 0.09], atol=0.003)
    # The 20 qa L2 records are each repeated about 7 times (144 drawn); the 300 qa L4
    # records give 200 distinct ones, none twice.
    qa_l2 = collections.Counter(r["id"] for r in out if r["id"].startswith("qa-L2"))
    assert len(qa_l2) == 20 and max(qa_l2.values()) - min(qa_l2.values()) <= 1
    qa_l4 = collections.Counter(r["id"] for r in out if r["id"].startswith("qa-L4"))
    assert max(qa_l4.values()) == 1
    # Seeded, and shuffled (types interleave).
    again = resample.resample_label_independent(records, ("query_type",), seed=0)
    assert [r["id"] for r in again] == [r["id"] for r in out]
    other = resample.resample_label_independent(records, ("query_type",), seed=1)
    assert [r["id"] for r in other] != [r["id"] for r in out]
    assert len({r["query_type"] for r in out[:20]}) > 1
    assert len(resample.resample_label_independent(records, ("query_type",), 0, size=37)) == 37


def test_bad_keys_and_records_are_named():
    with pytest.raises(ValueError, match="tuple of record keys"):
        resample.check_keys("query_type", "config.sft.label_independent_of")
    with pytest.raises(ValueError, match="independent of itself"):
        resample.check_keys(("label",), "x")
    with pytest.raises(ValueError, match="records \\[0\\] have no 'query_type'"):
        resample.label_independent_classes([{"label": "L4"}], ("query_type",))
    with pytest.raises(ValueError, match="'L5'"):
        resample.label_independent_classes([{"label": "L5", "query_type": "qa"}],
                                           ("query_type",))
    with pytest.raises(ValueError, match="empty"):
        resample.label_independent_classes([], ("query_type",))


def test_sft_trains_the_resampled_records_when_asked():
    records = [dict(r, cot="c") for r in _records()]
    splits = {"sft": records}
    section = dict(sft.sft_section())
    assert section["label_independent_of"] == ()  # off by default: the records as they are
    assert sft.training_records(section, splits) == records
    section["label_independent_of"] = ("query_type",)
    out = sft.training_records(section, splits, seed=3)
    assert len(out) == 1000 and _mix(out, "qa")[1][2] == pytest.approx(0.36, abs=0.003)
    assert [r["id"] for r in out] == [r["id"] for r in resample.resample_label_independent(
        records, ("query_type",), seed=3)]
    with pytest.raises(ValueError, match="config.sft.label_independent_of"):
        sft.training_records({**section, "label_independent_of": "query_type"}, splits)
    untyped = {"sft": [{"id": "x", "label": "L4", "cot": "c"}]}
    with pytest.raises(ValueError, match="label_independent_of=.*train_split='sft'.*query_type"):
        sft.training_records(section, untyped)
