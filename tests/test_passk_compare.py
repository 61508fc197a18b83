"""she_jax.eval.passk_compare: sampled pass@1 / pass@k of runs against a baseline, paired."""

import json
import os

import numpy as np
import pytest

from she_jax.eval import passk_compare


def _run(tmp_path, name, correct, k=8, temperature=1.0, ids=None, split="dev"):
    d = tmp_path / name
    d.mkdir()
    ids = list(range(len(correct))) if ids is None else ids
    data = {"k": k, "temperature": temperature, "splits": {
        split: {"ids": ids, "num_correct": [int(c) for c in correct]},
        "test_qa": {"ids": ids, "num_correct": [int(c) for c in correct]}}}
    (d / "pass_at_k.json").write_text(json.dumps(data))
    return str(d)


def test_hand_values_and_intervals(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 9, size=300)
    start = _run(tmp_path, "start", base)
    # Two seeds of a run: +2 and +0 correct samples on every prompt (capped at k): the mean
    # per-prompt pass@1 gain is 1 / 8 where there is room.
    up2 = _run(tmp_path, "up2", np.minimum(base + 2, 8))
    same = _run(tmp_path, "same", base)
    result = passk_compare.compare({"sft": [start], "rl": [up2, same]})
    dev = result["splits"]["dev"]
    expected = np.mean((np.minimum(base + 2, 8) - base) / 8) / 2
    cell = dev["diffs"]["rl"]["pass@1"]
    assert cell["diff"] == pytest.approx(expected)
    assert cell["lo"] < cell["diff"] < cell["hi"] and cell["lo"] > 0
    # pass@k: prompts with 0 correct at the start and 2 in one seed gain 1/2.
    gained = np.mean((base == 0) * 0.5)
    assert dev["diffs"]["rl"]["pass@k"]["diff"] == pytest.approx(gained)
    assert dev["values"]["sft"]["pass@1"] == pytest.approx(base.mean() / 8)
    # A setting identical to the baseline: exactly 0 with a zero-width interval.
    zero = passk_compare.compare({"sft": [start], "same": [same]})["splits"]["dev"]
    assert zero["diffs"]["same"]["pass@1"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    assert set(result["splits"]) == {"dev", "test_qa"}
    text = passk_compare.markdown(result)
    assert f"{100 * expected:+.1f} [" in text and "| dev | 300 |" in text


def test_noise_alone_gives_an_interval_around_zero(tmp_path):
    rng = np.random.default_rng(1)
    p = rng.uniform(0.2, 0.8, size=400)
    a = _run(tmp_path, "a", rng.binomial(8, p))
    b = _run(tmp_path, "b", rng.binomial(8, p))
    cell = passk_compare.compare({"a": [a], "b": [b]})["splits"]["dev"]["diffs"]["b"]["pass@1"]
    assert cell["lo"] < 0 < cell["hi"]
    assert cell["hi"] - cell["lo"] < 0.06  # 400 prompts x 8 samples: a few points wide


def test_bad_inputs_are_named(tmp_path):
    good = _run(tmp_path, "good", [1, 2, 3])
    with pytest.raises(FileNotFoundError, match="missing.*pass_at_k.json"):
        passk_compare.compare({"a": [good], "b": [str(tmp_path / "missing")]})
    other_k = _run(tmp_path, "k4", [1, 2, 3], k=4)
    with pytest.raises(ValueError, match=r"k4.*k=4.*samples must be drawn alike"):
        passk_compare.compare({"a": [good], "b": [other_k]})
    other_ids = _run(tmp_path, "ids", [1, 2, 3], ids=[5, 6, 7])
    with pytest.raises(ValueError, match=r"ids.*other prompts"):
        passk_compare.compare({"a": [good], "b": [other_ids]})
    with pytest.raises(ValueError, match="--baseline='x'"):
        passk_compare.compare({"a": [good], "b": [good]}, baseline="x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pass_at_k.json").write_text("{")
    with pytest.raises(ValueError, match="broken.*not JSON"):
        passk_compare.compare({"a": [good], "b": [str(broken)]})
    with pytest.raises(ValueError, match="NAME=DIR"):
        passk_compare._parse_setting("just_a_dir")


def test_cli_writes_markdown_and_json(tmp_path, capsys):
    a = _run(tmp_path, "a", [0, 4, 8, 2])
    b = _run(tmp_path, "b", [2, 4, 8, 4])
    out = str(tmp_path / "out" / "passk")
    assert passk_compare.main([f"sft={a}", f"rl={b}", f"--out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "| dev | 4 | 43.8 | 56.2 | +12.5 [" in printed
    saved = json.load(open(out + ".json"))
    assert saved["splits"]["dev"]["diffs"]["rl"]["pass@1"]["diff"] == pytest.approx(0.125)
    assert os.path.isfile(out + ".md")
    with pytest.raises(SystemExit) as e:
        passk_compare.main([f"sft={a}"])
    assert e.value.code == 2
