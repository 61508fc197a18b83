"""Tests for she_jax.data.stats: the CLI on JSONL and ESCI inputs, and compute_stats."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from she_jax.data import cot, readers, stats
from she_jax.tokenizer import train_sentencepiece

ANNOTATIONS = {"query": ["category: tv"], "item": ["category: tv", "brand: sony"],
               "category_match": ["category match: exact"], "attribute_match": [],
               "judgment": ["label: L4"]}
ROWS = [
    {"query": "sony tv", "item_title": "Sony TV", "label": "L4", "query_type": "brand",
     "popularity": "head", "annotations": ANNOTATIONS},
    {"query": "tv", "item_title": "LG TV", "label": "L4", "query_type": "category",
     "popularity": "tail", "cot": cot.render_cot(ANNOTATIONS, "L4")},
    {"query": "cheap tv", "item_title": "TCL TV", "label": 3, "query_type": "alternative",
     "popularity": "head"},
    {"query": "tv stand", "item_title": "Oak stand", "label": "L2"},
]


@pytest.fixture()
def jsonl_path(tmp_path):
    lines = [json.dumps(r) for r in ROWS] + ['{"query": "x", "item_title": "y", "label": "L9"}']
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture()
def tokenizer_dir(tmp_path):
    texts = [cot.render_cot(ANNOTATIONS, "L4"), "sony tv lg tcl oak stand cheap"] * 20
    train_sentencepiece(texts, 300, tmp_path / "tok")
    return str(tmp_path / "tok")


def test_cli_json_on_jsonl(jsonl_path, tokenizer_dir, capsys):
    result = stats.main(["stats", f"--jsonl={jsonl_path}", "--on_bad_row=skip",
                         f"--tokenizer={tokenizer_dir}", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert printed["size"] == 4
    assert printed["label_counts"] == {"L1": 0, "L2": 1, "L3": 1, "L4": 2}
    # counts (0, 1, 1, 2): mean 1, population std sqrt(0.5).
    assert printed["label_cv"] == pytest.approx(math.sqrt(0.5))
    assert printed["query_types"] == {"alternative": 1, "brand": 1, "category": 1, "unknown": 1}
    assert printed["popularity"] == {"head": 2, "tail": 1, "unknown": 1}
    assert printed["skipped"] == {"unknown_label": 1}
    # Both CoT records render the same text; its token count is every percentile.
    from she_jax.tokenizer import load_tokenizer
    n = len(load_tokenizer(tokenizer_dir).encode(cot.render_cot(ANNOTATIONS, "L4")))
    assert printed["cot_tokens"] == {"p50": n, "p90": n, "p99": n, "max": n, "records": 2}


def test_cli_text_report_and_bad_row_error(jsonl_path, tokenizer_dir, capsys):
    stats.main(["stats", f"--jsonl={jsonl_path}", "--on_bad_row=skip",
                f"--tokenizer={tokenizer_dir}"])
    out = capsys.readouterr().out
    assert "size:        4" in out and "L4 2 (50.0%)" in out and "unknown_label 1" in out
    with pytest.raises(SystemExit, match=r"data.jsonl: line 5: field 'label'"):
        stats.main(["stats", f"--jsonl={jsonl_path}"])


def test_cli_subprocess_on_esci_dir(tmp_path):
    examples = pd.DataFrame({
        "example_id": [0, 1, 2, 3, 4], "query": ["tv"] * 5, "query_id": [1] * 5,
        "product_id": ["P1", "P2", "P3", "P4", "P9"], "product_locale": ["us"] * 5,
        "esci_label": ["E", "E", "S", "I", "E"], "small_version": [1] * 5,
        "large_version": [1] * 5, "split": ["train"] * 5})
    products = pd.DataFrame({"product_id": ["P1", "P2", "P3", "P4"],
                             "product_title": ["a", "b", "c", "d"], "product_locale": ["us"] * 4})
    examples.to_parquet(tmp_path / f"{readers.ESCI_EXAMPLES}.parquet")
    products.to_csv(tmp_path / f"{readers.ESCI_PRODUCTS}.csv", index=False)
    proc = subprocess.run(
        [sys.executable, "-m", "she_jax.data.stats", f"--esci_dir={tmp_path}",
         "--on_bad_row=skip", "--json"], capture_output=True, text=True, check=True)
    printed = json.loads(proc.stdout)
    assert printed["size"] == 4
    assert printed["label_counts"] == {"L1": 1, "L2": 0, "L3": 1, "L4": 2}
    assert printed["label_cv"] == pytest.approx(math.sqrt(0.5))
    assert printed["cot_tokens"] is None  # ESCI has no CoT: no tokenizer is built
    assert printed["skipped"] == {"orphan_product": 1}
    assert printed["query_types"] == {"unknown": 4} and printed["popularity"] == {"unknown": 4}


def test_compute_stats_balanced_and_empty():
    records = [{"label": label, "query_type": "qa", "popularity": "tail"}
               for label in ("L1", "L2", "L3", "L4") * 3]
    result = stats.compute_stats(records)
    assert result["label_cv"] == 0.0 and result["cot_tokens"] is None
    empty = stats.compute_stats([])
    assert empty["size"] == 0 and empty["label_cv"] is None
    assert result["labels_by_query_type"] == {"qa": {"L1": 3, "L2": 3, "L3": 3, "L4": 3}}


def test_label_mix_by_query_type_is_counted_and_printed():
    records = ([{"label": "L4", "query_type": "qa"}] * 3 + [{"label": "L2", "query_type": "qa"}]
               + [{"label": "L2", "query_type": "negation"}] * 2
               + [{"label": "L1"}])  # no type: counted as 'unknown'
    result = stats.compute_stats(records)
    assert result["labels_by_query_type"] == {
        "negation": {"L1": 0, "L2": 2, "L3": 0, "L4": 0},
        "qa": {"L1": 0, "L2": 1, "L3": 0, "L4": 3},
        "unknown": {"L1": 1, "L2": 0, "L3": 0, "L4": 0}}
    report = stats.format_report(result, "x.jsonl")
    assert "  qa           75 / 0 / 25 / 0  (n=4)" in report
    assert "  negation     0 / 0 / 100 / 0  (n=2)" in report


def test_compute_stats_percentiles():
    class CountingTokenizer:  # one token per character: lengths are the text lengths
        def encode_batch(self, texts):
            return [list(range(len(t))) for t in texts]

    records = [{"label": "L4", "cot": "x" * n} for n in range(1, 101)]
    got = stats.compute_stats(records, CountingTokenizer())["cot_tokens"]
    expected = np.percentile(np.arange(1, 101), [50, 90, 99])
    assert [got["p50"], got["p90"], got["p99"]] == pytest.approx(list(expected))
    assert got["max"] == 100 and got["records"] == 100


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_on_an_empty_file_says_so(tmp_path, capsys, as_json):
    # Issue 20 item 4: the text report divided by the size (ZeroDivisionError).
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    result = stats.main(["stats", f"--jsonl={path}"] + (["--json"] if as_json else []))
    captured = capsys.readouterr()
    assert result["size"] == 0 and result["label_cv"] is None
    assert f"warning: {path} has no records (no rows in the file)" in captured.err
    if as_json:
        assert json.loads(captured.out) == json.loads(json.dumps(result))
    else:
        assert "size:        0" in captured.out and "labels:      - (no records)" in captured.out


def test_cli_on_a_file_of_bad_rows_counts_them(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"query": "tv"}\n\xff\xfe\n')
    stats.main(["stats", f"--jsonl={path}", "--on_bad_row=skip"])
    captured = capsys.readouterr()
    assert "has no records (2 bad rows skipped: {'missing_field': 1, 'bad_utf8': 1})" in \
        captured.err
    assert "skipped:     bad_utf8 1, missing_field 1" in captured.out
