"""Tests for she_jax.data.readers: JSONL and ESCI (parquet and csv) readers."""

import json

import pandas as pd
import pytest

from she_jax.data import cot, readers

ANNOTATIONS = {"query": ["category: tv"], "item": ["category: tv", "brand: sony"],
               "category_match": ["category match: exact"], "attribute_match": [],
               "judgment": ["label: L4"]}
GOOD = [
    {"id": "r1", "query": "sony tv", "item_title": "Sony Bravia 55in TV", "label": "L4",
     "query_type": "brand", "popularity": "head", "annotations": ANNOTATIONS,
     "cot": cot.render_cot(ANNOTATIONS, "L4")},
    {"query": "cheap tv", "item_title": "TCL 43in TV", "label": 3},
    {"query": "tv stand", "item_title": "Oak TV stand", "label": "L1", "extra": "ignored"},
]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_jsonl_good_file(tmp_path):
    lines = [json.dumps(GOOD[0]), json.dumps(GOOD[1]), "", json.dumps(GOOD[2])]
    path = write_lines(tmp_path / "good.jsonl", lines)
    result = readers.read_jsonl(path)
    assert result.skipped == {}
    assert [r["label"] for r in result.records] == ["L4", "L3", "L1"]
    first, second, third = result.records
    assert first == {k: GOOD[0][k] for k in first}
    assert second == {"id": "good.jsonl:2", "query": "cheap tv", "item_title": "TCL 43in TV",
                      "label": "L3", "query_type": "unknown", "popularity": "unknown",
                      "annotations": None, "cot": None}
    assert third["id"] == "good.jsonl:4"  # line numbers count the blank line
    assert "extra" not in third


BAD_ROWS = [  # (line text, reason, field)
    ('{"query": "tv", "item_title": "TV"', "bad_json", None),
    ('["tv", "TV", "L4"]', "not_object", None),
    ('{"item_title": "TV", "label": "L4"}', "missing_field", "query"),
    ('{"query": 7, "item_title": "TV", "label": "L4"}', "wrong_type", "query"),
    ('{"query": "tv", "item_title": "", "label": "L4"}', "missing_field", "item_title"),
    ('{"query": "tv", "item_title": "TV"}', "missing_field", "label"),
    ('{"query": "tv", "item_title": "TV", "label": "Excellent"}', "unknown_label", "label"),
    ('{"query": "tv", "item_title": "TV", "label": 5}', "unknown_label", "label"),
    ('{"query": "tv", "item_title": "TV", "label": "L4", "query_type": "funny"}',
     "unknown_query_type", "query_type"),
    ('{"query": "tv", "item_title": "TV", "label": "L4", "annotations": {"x": []}}',
     "bad_annotations", "annotations"),
    ('{"query": "tv", "item_title": "TV", "label": "L4", "annotations": {"query": "a: b"}}',
     "wrong_type", "annotations"),
    ('{"query": "tv", "item_title": "TV", "label": "L4", "cot": "<|step1|> no label"}',
     "bad_cot", "cot"),
]


@pytest.mark.parametrize("line, reason, field", BAD_ROWS)
def test_jsonl_bad_row_error_names_file_line_field(tmp_path, line, reason, field):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD[1]), line])
    with pytest.raises(ValueError) as info:
        readers.read_jsonl(path)
    error = info.value
    assert isinstance(error, readers.BadRowError)
    assert (error.path, error.where, error.field, error.reason) == (path, "line 2", field, reason)
    assert str(error).startswith(f"{path}: line 2:")
    if field:
        assert f"field {field!r}" in str(error)


def test_jsonl_skip_mode_counts_by_reason(tmp_path):
    lines = [json.dumps(GOOD[1])] + [line for line, _, _ in BAD_ROWS] + [json.dumps(GOOD[2])]
    result = readers.read_jsonl(write_lines(tmp_path / "mixed.jsonl", lines), on_bad_row="skip")
    assert [r["query"] for r in result.records] == ["cheap tv", "tv stand"]
    expected = {}
    for _, reason, _ in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    assert result.skipped == expected
    assert sum(result.skipped.values()) == len(BAD_ROWS)


def test_jsonl_rejects_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="on_bad_row"):
        readers.read_jsonl(write_lines(tmp_path / "x.jsonl", ["{}"]), on_bad_row="ignore")


EXAMPLES = pd.DataFrame({
    "example_id": [0, 1, 2, 3, 4, 5],
    "query": ["tv", "tv", "tv", "tv", "mesa", "tv"],
    "query_id": [1, 1, 1, 1, 2, 1],
    "product_id": ["P1", "P2", "P3", "P4", "P1", "P2"],
    "product_locale": ["us", "us", "us", "us", "es", "us"],
    "esci_label": ["E", "S", "C", "I", "E", "E"],
    "small_version": [1, 1, 0, 1, 1, 0],
    "large_version": [1, 1, 1, 1, 1, 1],
    "split": ["train", "train", "test", "train", "train", "test"],
})
PRODUCTS = pd.DataFrame({
    "product_id": ["P1", "P2", "P3", "P4", "P1"],
    "product_title": ["Sony TV", "LG TV", "TV wall mount", "Garden hose", "Mesa de roble"],
    "product_locale": ["us", "us", "us", "us", "es"],
    "product_brand": ["Sony", "LG", "X", "Y", "Z"],
})


def write_esci(directory, fmt, examples=EXAMPLES, products=PRODUCTS):
    directory.mkdir(exist_ok=True)
    for frame, stem in ((examples, readers.ESCI_EXAMPLES), (products, readers.ESCI_PRODUCTS)):
        path = directory / f"{stem}.{fmt}"
        frame.to_parquet(path) if fmt == "parquet" else frame.to_csv(path, index=False)
    return directory


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_esci_join_and_label_mapping(tmp_path, fmt):
    result = readers.read_esci(write_esci(tmp_path / "esci", fmt))
    assert result.skipped == {} and result.filtered == 0
    got = [(r["id"], r["query"], r["item_title"], r["label"]) for r in result.records]
    assert got == [("esci:0", "tv", "Sony TV", "L4"), ("esci:1", "tv", "LG TV", "L3"),
                   ("esci:2", "tv", "TV wall mount", "L2"), ("esci:3", "tv", "Garden hose", "L1"),
                   ("esci:4", "mesa", "Mesa de roble", "L4"), ("esci:5", "tv", "LG TV", "L4")]
    assert all(r["query_type"] == "unknown" and r["annotations"] is None for r in result.records)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_esci_filters(tmp_path, fmt):
    directory = write_esci(tmp_path / "esci", fmt)
    result = readers.read_esci(directory, locale="us", small_version=True, split="train")
    assert [r["id"] for r in result.records] == ["esci:0", "esci:1", "esci:3"]
    assert result.filtered == 3


@pytest.mark.parametrize("fmt, where", [("parquet", "row 2"), ("csv", "line 4")])
def test_esci_orphan_product_is_a_bad_row(tmp_path, fmt, where):
    directory = write_esci(tmp_path / "esci", fmt, products=PRODUCTS.drop(index=2))
    with pytest.raises(ValueError, match=f"{where}: field 'product_id'.*no product row"):
        readers.read_esci(directory)
    result = readers.read_esci(directory, on_bad_row="skip")
    assert result.skipped == {"orphan_product": 1}
    assert len(result.records) == 5


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_esci_unknown_label_and_skip_counts(tmp_path, fmt):
    examples = EXAMPLES.copy()
    examples.loc[1, "esci_label"] = "X"
    products = pd.concat([PRODUCTS, PRODUCTS.iloc[[0]]], ignore_index=True)  # duplicate P1/us
    directory = write_esci(tmp_path / "esci", fmt, examples=examples, products=products)
    with pytest.raises(readers.BadRowError) as info:
        readers.read_esci(directory)
    assert (info.value.reason, info.value.where, info.value.field) == (
        "product_duplicate", "row 5" if fmt == "parquet" else "line 7", "product_id")
    result = readers.read_esci(directory, on_bad_row="skip")
    assert result.skipped == {"product_duplicate": 1, "unknown_label": 1}
    assert len(result.records) == 5


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_esci_missing_column(tmp_path, fmt):
    directory = write_esci(tmp_path / "esci", fmt, examples=EXAMPLES.drop(columns=["esci_label"]))
    with pytest.raises(ValueError,
                       match=r"examples\.%s: missing column\(s\) \['esci_label'\]" % fmt):
        readers.read_esci(directory, on_bad_row="skip")  # not a row problem: always an error


def test_esci_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="shopping_queries_dataset_examples"):
        readers.read_esci(tmp_path)


def test_esci_csv_line_numbers_follow_multiline_fields(tmp_path):
    products = PRODUCTS.copy()
    products.loc[0, "product_title"] = "Sony\nTV"  # a quoted field over two lines
    examples = EXAMPLES.copy()
    examples.loc[3, "query"] = ""
    directory = write_esci(tmp_path / "esci", "csv", examples=examples, products=products)
    with pytest.raises(readers.BadRowError, match="line 5: field 'query'"):
        readers.read_esci(directory)
    products.loc[3, "product_title"] = ""
    directory = write_esci(tmp_path / "esci2", "csv", products=products)
    with pytest.raises(readers.BadRowError, match="products.csv: line 6: field 'product_title'"):
        readers.read_esci(directory)


def test_jsonl_bad_utf8_line_is_a_bad_row_in_both_modes(tmp_path):
    # Issue 20 item 4: a stray \xff\xfe used to stop the read with a bare UnicodeDecodeError
    # (no file, no line) in both modes.
    bad = '{"query": "tv", "item_title": "TV'.encode() + b"\xff\xfe" + b'", "label": "L4"}'
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b"\n".join([json.dumps(GOOD[1]).encode(), bad,
                                 json.dumps(GOOD[2]).encode()]) + b"\n")
    with pytest.raises(readers.BadRowError) as info:
        readers.read_jsonl(str(path))
    assert (info.value.where, info.value.reason) == ("line 2", "bad_utf8")
    column = bad.index(b"\xff") + 1
    assert str(info.value) == (f"{path}: line 2: not valid UTF-8 (byte 0xff at column "
                               f"{column}) [bad_utf8]")
    result = readers.read_jsonl(str(path), on_bad_row="skip")
    assert result.skipped == {"bad_utf8": 1}
    assert [r["query"] for r in result.records] == ["cheap tv", "tv stand"]
    assert result.records[1]["id"] == "bytes.jsonl:3"  # lines still count the bad one


def test_jsonl_utf8_text_and_a_bom_are_read(tmp_path):
    row = {"query": "café 电视", "item_title": "Téléviseur 电视机", "label": "L4"}
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(row, ensure_ascii=False).encode() + b"\r\n")
    (record,) = readers.read_jsonl(str(path)).records
    assert (record["query"], record["item_title"]) == (row["query"], row["item_title"])


def test_jsonl_bad_json_message_gives_the_line_length(tmp_path):
    # Issue 20 item 8: the column alone cannot tell a cut-short line from a bad character.
    line = '{"query": "tv", "item_title": "TV", "label": "L4"'
    path = write_lines(tmp_path / "cut.jsonl", [json.dumps(GOOD[1]), line])
    with pytest.raises(readers.BadRowError,
                       match=rf"line 2: invalid JSON \(.* at column {len(line) + 1}; the line has "
                             rf"{len(line)} characters\) \[bad_json\]"):
        readers.read_jsonl(path)


def test_esci_csv_bad_utf8_cell_is_a_bad_row(tmp_path):
    directory = write_esci(tmp_path / "esci", "csv")
    products = directory / f"{readers.ESCI_PRODUCTS}.csv"
    products.write_bytes(products.read_bytes().replace(b"Garden hose", b"Garden \xffhose"))
    with pytest.raises(readers.BadRowError) as info:
        readers.read_esci(directory)
    assert (info.value.where, info.value.field, info.value.reason) == (
        "line 5", "product_title", "product_bad_utf8")
    assert "byte 0xff at character 8" in str(info.value)
    result = readers.read_esci(directory, on_bad_row="skip")
    # The product is skipped, so its example is then an orphan: both are counted.
    assert result.skipped == {"product_bad_utf8": 1, "orphan_product": 1}
    assert len(result.records) == 5
