"""`python -m she_jax.score`: a trained run scores a user's own query–item pairs (issue 17 §4)."""

import collections
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest

import tiny_runs
from she_jax import run_dir, sampling, score, special_tokens as st
from she_jax.data import cot, sources
from she_jax.data.readers import BadRowError
from she_jax.eval import deploy, evaluate
from she_jax.models import transformer

NUM_PAIRS = 11
BATCH = 4  # 11 pairs: two full batches and a partial one


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny SFT run trained answer-first with think-first as its second order, and a copy
    of it recorded as a think-first run (the same model, served think-first)."""
    root = tmp_path_factory.mktemp("score")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHE_JAX_CACHE", str(root / "cache"))
        answer_first = str(root / "sft")
        config = tiny_runs.build_sft_run(answer_first, extra_orders=("think_first",))
        think_first = str(shutil.copytree(answer_first, root / "sft_think"))
        eval_json = os.path.join(think_first, run_dir.EVAL_FILE)
        with open(eval_json) as f:
            content = json.load(f)
        content["meta"]["order"] = "think_first"
        with open(eval_json, "w") as f:
            json.dump(content, f)
        records = sources.load_splits(config.data)["dev"][:NUM_PAIRS]
        yield types.SimpleNamespace(answer_first=answer_first, think_first=think_first,
                                    config=config, records=records)


def _write_jsonl(path, rows) -> str:
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode())
    return str(path)


def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _pairs(records) -> list[dict]:
    # The gold label rides along: fields other than id/query/item_title are ignored.
    return [{"id": r["id"], "query": r["query"], "item_title": r["item_title"],
             "label": r["label"]} for r in records]


def _expected_prefill_probs(run: run_dir.Run, records) -> np.ndarray:
    prompts = [run.tokenizer.encode(cot.render_prompt(r["query"], r["item_title"]))
               for r in records]
    return np.asarray(sampling.score_labels(run.model_config, run.params, prompts, None,
                                            run.tokenizer.label_ids))


def _probs(rows) -> np.ndarray:
    return np.array([[row["probs"][name] for name in st.LABELS] for row in rows])


def test_answer_first_scores_are_the_prefill_label_softmax_and_cumpt_tiers(runs, tmp_path):
    pairs = _pairs(runs.records)
    pairs[3]["id"] = 1234  # an integer id becomes a string
    del pairs[5]["id"]  # no id: '<file name>:<line>'
    path = _write_jsonl(tmp_path / "pairs.jsonl", pairs)
    out = str(tmp_path / "scored.jsonl")
    result = score.score_file(runs.answer_first, path, out, beta=0.4, batch_size=BATCH,
                              show_progress=False)
    assert result["scored"] == NUM_PAIRS and result["skipped"] == {}
    assert result["mode"] == "answer_first_prefill" and result["pairs_per_second"] > 0
    assert not os.path.exists(out + ".partial")
    rows = _read_jsonl(out)
    assert [r["id"] for r in rows] == ([p["id"] for p in pairs[:3]] + ["1234"]
                                       + [pairs[4]["id"], "pairs.jsonl:6"]
                                       + [p["id"] for p in pairs[6:]])
    assert [(r["query"], r["item_title"]) for r in rows] == [(p["query"], p["item_title"])
                                                             for p in pairs]
    assert all(set(r) == {"id", "query", "item_title", "probs", "label", "tier", "mode"}
               for r in rows)
    assert {r["mode"] for r in rows} == {"answer_first_prefill"}

    expected = _expected_prefill_probs(run_dir.load_run(runs.answer_first), runs.records)
    probs = _probs(rows)
    np.testing.assert_allclose(probs, expected, atol=2e-6)  # written rounded to 6 places
    assert [r["label"] for r in rows] == [st.LABELS[i] for i in expected.argmax(axis=1)]
    tiers = deploy.cumpt_tiers(expected, 0.4)
    assert [r["tier"] for r in rows] == [deploy.TIERS[t] for t in tiers]
    # The default beta is the run's eval.beta.
    result = score.score_file(runs.answer_first, path, out, batch_size=BATCH, show_progress=False)
    tiers = deploy.cumpt_tiers(expected, runs.config.eval.beta)
    assert [r["tier"] for r in _read_jsonl(out)] == [deploy.TIERS[t] for t in tiers]


def test_csv_input_gives_the_jsonl_results(runs, tmp_path):
    pairs = _pairs(runs.records[:5])
    pairs[1]["item_title"] = 'a "quoted", two-line\ntitle'
    del pairs[2]["id"]
    jsonl = _write_jsonl(tmp_path / "pairs.jsonl", pairs)
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "query", "item_title", "label", "extra"])
        writer.writeheader()
        for pair in pairs:
            writer.writerow({**pair, "extra": "ignored"})
    score.score_file(runs.answer_first, jsonl, str(tmp_path / "a.jsonl"), batch_size=BATCH,
                     show_progress=False)
    score.score_file(runs.answer_first, str(path), str(tmp_path / "b.jsonl"), batch_size=BATCH,
                     show_progress=False)
    from_jsonl, from_csv = _read_jsonl(tmp_path / "a.jsonl"), _read_jsonl(tmp_path / "b.jsonl")
    # Line 1 is the header; record 2 spans lines 3-4, so record 3 starts on line 5.
    assert from_csv[2]["id"] == "pairs.csv:5" and from_jsonl[2]["id"] == "pairs.jsonl:3"
    for a, b in zip(from_jsonl, from_csv):
        a.pop("id"), b.pop("id")
        assert a == b


def test_explain_adds_the_cot_decoded_after_the_scored_label(runs, tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(runs.records))
    out = str(tmp_path / "scored.jsonl")
    result = score.score_file(runs.answer_first, path, out, batch_size=BATCH, explain=True,
                              show_progress=False)
    assert result["mode"] == "answer_first_prefill"
    rows = _read_jsonl(out)
    assert all(isinstance(r["explanation"], str) and r["explanation"] for r in rows)
    # The evaluator's answer-first path decodes the same text after the same label.
    run = run_dir.load_run(runs.answer_first)
    eval_config = ml_collections.ConfigDict({"batch_size": BATCH,
                                             "max_new_tokens": runs.config.eval.max_new_tokens})
    predicted = evaluate.predict_split(run.model_config, run.params, run.tokenizer,
                                       runs.records, "answer_first", eval_config)
    np.testing.assert_allclose(_probs(rows), predicted["probs"], atol=2e-5)
    for row, text in zip(rows, predicted["texts"]):
        assert text == cot.label_token(row["label"]) + row["explanation"]


def test_think_first_run_decodes_the_cot_and_reads_its_label_position(runs, tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(runs.records))
    out = str(tmp_path / "scored.jsonl")
    max_new = 24
    result = score.score_file(runs.think_first, path, out, batch_size=BATCH, explain=True,
                              max_new_tokens=max_new, show_progress=False)
    assert result["mode"] == "think_first_decode" and result["scored"] == NUM_PAIRS
    rows = _read_jsonl(out)
    run = run_dir.load_run(runs.think_first)
    sampler = sampling.Sampler(run.model_config, sampling.SamplingConfig(
        temperature=0.0, eos_id=run.tokenizer.eos_id, pad_id=run.tokenizer.pad_id))
    label_ids = list(run.tokenizer.label_ids)
    for record, row in zip(runs.records, rows):
        assert row["mode"] == "think_first_decode"
        prompt = run.tokenizer.encode(cot.render_prompt(record["query"], record["item_title"]))
        sample = sampler(run.params, [prompt], jax.random.PRNGKey(0), max_new_tokens=max_new)
        written = np.asarray(sample.tokens[0, 0, :int(sample.lengths[0, 0])]).tolist()
        assert row["explanation"] == run.tokenizer.decode(written, skip_special=True)
        at = [i for i, t in enumerate(written) if t in label_ids]
        cut = at[0] if at else len(written)
        assert row["label"] == (st.LABELS[label_ids.index(written[cut])] if at else None)
        # The label distribution is the next-token one after everything before the label:
        # one plain forward over prompt + CoT (no cache, no bucketing) gives the same.
        tokens = np.array([prompt + written[:cut]], np.int32)
        logits = transformer.forward(run.model_config, run.params, tokens,
                                     np.ones_like(tokens, bool))
        expected = jax.nn.softmax(np.asarray(logits)[0, -1, label_ids])
        np.testing.assert_allclose([row["probs"][name] for name in st.LABELS], expected,
                                   atol=2e-5)


def test_bad_rows_name_file_and_line_or_are_skipped_and_counted(runs, tmp_path):
    good = _pairs(runs.records[:3])
    bad_lines = [
        (b"{not json\n", "bad_json", None),
        (b"[1, 2]\n", "not_object", None),
        (json.dumps({"query": "red shoes"}).encode() + b"\n", "missing_field", "item_title"),
        (json.dumps({"query": 7, "item_title": "x"}).encode() + b"\n", "wrong_type", "query"),
        (json.dumps({"query": "  ", "item_title": "x"}).encode() + b"\n", "missing_field",
         "query"),
        (b'{"query": "red \xff\xfe shoes", "item_title": "x"}\n', "bad_encoding", None),
        (json.dumps({"query": "shoes", "item_title": "shoe " * 3000}).encode() + b"\n",
         "too_long", None),
    ]
    for line, reason, field in bad_lines:
        path = _write_jsonl(tmp_path / f"{reason}.jsonl", [good[0], b"\n", line, good[1]])
        out = str(tmp_path / f"{reason}.out.jsonl")
        with pytest.raises(BadRowError) as error:
            score.score_file(runs.answer_first, path, out, batch_size=BATCH,
                             show_progress=False)
        message = str(error.value)
        assert message.startswith(f"{path}: line 3:") and f"[{reason}]" in message, message
        if field:
            assert f"field {field!r}" in message
        assert not os.path.exists(out) and not os.path.exists(out + ".partial")

    rows = [good[0]] + [line for line, _, _ in bad_lines] + [b"\n", good[1], good[2]]
    path = _write_jsonl(tmp_path / "mixed.jsonl", rows)
    out = str(tmp_path / "mixed.out.jsonl")
    result = score.score_file(runs.answer_first, path, out, batch_size=BATCH,
                              on_bad_row="skip", show_progress=False)
    expected = collections.Counter(reason for _, reason, _ in bad_lines)
    assert result["skipped"] == dict(expected) and result["scored"] == 3
    assert [r["id"] for r in _read_jsonl(out)] == [p["id"] for p in good]

    # CSV: a missing column is always an error; a bad cell is a bad row.
    no_title = tmp_path / "no_title.csv"
    no_title.write_text("id,query,title\n1,red shoes,nike shoes\n")
    with pytest.raises(ValueError, match=f"{no_title}: line 1: the header lacks column"):
        list(score.read_pairs(str(no_title)))
    bad_cell = tmp_path / "bad_cell.csv"
    bad_cell.write_bytes(b"query,item_title\nred shoes,nike\n\xff shoes,nike\n")
    with pytest.raises(BadRowError, match=f"{bad_cell}: line 3: field 'query'"):
        list(score.read_pairs(str(bad_cell)))
    skipped = collections.Counter()
    assert [p.query for p in score.read_pairs(str(bad_cell), "skip", skipped)] == ["red shoes"]
    assert skipped == {"bad_encoding": 1}


def test_scoring_streams_batch_by_batch_and_reuses_compiled_shapes(runs):
    run = run_dir.load_run(runs.answer_first)
    window = 2 * BATCH
    scorer = score.Scorer(run, score.ScoreOptions(beta=0.5, batch_size=BATCH, window_batches=2))
    records = sources.load_splits(runs.config.data)["dev"][:5 * BATCH]  # windows 8, 8, 4
    pairs = [score.Pair(r["id"], r["query"], r["item_title"], "mem", f"line {i + 1}")
             for i, r in enumerate(records)]
    read = []

    def reader(items):
        for pair in items:
            read.append(pair.id)
            yield pair

    class Recorder(io.StringIO):
        """Notes how many pairs had been read when each output line was written."""

        def __init__(self):
            super().__init__()
            self.read_at_write = []

        def write(self, text):
            self.read_at_write.append(len(read))
            return super().write(text)

    traces = sampling.TRACE_COUNTS["score_labels"]
    out = Recorder()
    assert scorer.score(reader(pairs), out) == len(pairs)
    # Output line k is written once its window is scored, with at most that window read,
    # and in input order although a window is scored in batches sorted by length.
    assert out.read_at_write == [min((k // window + 1) * window, len(pairs))
                                 for k in range(len(pairs))]
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == [
        p.id for p in pairs]
    new_traces = sampling.TRACE_COUNTS["score_labels"] - traces
    buckets = {sampling.bucket_length(len(run.tokenizer.encode(
        cot.render_prompt(p.query, p.item_title))), 64) for p in pairs}
    assert new_traces <= len(buckets)
    # A short last batch is padded to the batch size: no new compilation.
    traces = sampling.TRACE_COUNTS["score_labels"]
    out = Recorder()
    assert scorer.score(reader(pairs[:2]), out) == 2
    assert sampling.TRACE_COUNTS["score_labels"] == traces
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == [
        p.id for p in pairs[:2]]


def test_command_line(runs, tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(runs.records[:3]))
    out = str(tmp_path / "scored.jsonl")
    command = [sys.executable, "-m", "she_jax.score", f"--workdir={runs.answer_first}",
               f"--input={path}", f"--output={out}", "--beta=0.8", "--explain"]
    cwd = os.path.dirname(os.path.dirname(__file__))
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "scored 3 pairs (answer_first_prefill)" in done.stdout and "pairs/s" in done.stdout
    rows = _read_jsonl(out)
    assert len(rows) == 3 and all("explanation" in r for r in rows)
    bad = _write_jsonl(tmp_path / "bad.jsonl", [_pairs(runs.records[:1])[0], b"{oops\n"])
    done = subprocess.run(command[:4] + [f"--input={bad}", f"--output={out}.bad"],
                          capture_output=True, text=True, cwd=cwd)
    assert done.returncode != 0
    assert f"she_jax.score: {bad}: line 2:" in done.stderr
