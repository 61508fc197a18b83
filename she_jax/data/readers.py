"""Readers that turn real data files into she_jax records (the schema in docs/data_formats.md).

- `read_jsonl`: one JSON object per line, the she_jax record fields.
- `read_esci`: the Amazon ESCI shopping-queries files (parquet or csv), examples joined to
  products on (product_id, product_locale); E/S/C/I -> L4/L3/L2/L1 (approximate).

A bad row (bad JSON, wrong type, unknown label, missing field, an example whose product is
absent, ...) raises `BadRowError` (a ValueError naming file, line or row, and field) with
on_bad_row='error', or is skipped and counted under its reason with on_bad_row='skip'.
Nothing is dropped without being counted. A missing column is always an error.
"""

from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import json
import os
from typing import Any, Iterable, Iterator, Sequence

from she_jax import special_tokens as st
from she_jax.data import cot

QUERY_TYPES = ("category", "attribute", "brand", "negation", "alternative", "qa", "knowledge",
               "unknown")
POPULARITIES = ("head", "torso", "tail", "unknown")
# JSONL may give labels as the integer grade: 4 -> L4 (best) ... 1 -> L1.
_INT_LABELS = {4: "L4", 3: "L3", 2: "L2", 1: "L1"}
# Approximate: Substitute ~ Related, Complement ~ Mismatch is a stretch (docs/data_formats.md).
ESCI_TO_LABEL = {"E": "L4", "S": "L3", "C": "L2", "I": "L1"}
ESCI_EXAMPLE_COLUMNS = ("example_id", "query", "product_id", "product_locale", "esci_label")
ESCI_PRODUCT_COLUMNS = ("product_id", "product_locale", "product_title")
ESCI_EXAMPLES = "shopping_queries_dataset_examples"
ESCI_PRODUCTS = "shopping_queries_dataset_products"
ON_BAD_ROW = ("error", "skip")


class BadRowError(ValueError):
    """A row that cannot become a record. `where` is 'line N' (1-based) or 'row N' (0-based)."""

    def __init__(self, path: str, where: str, field: str | None, reason: str, message: str):
        self.path, self.where, self.field, self.reason = path, where, field, reason
        field_part = f" field {field!r}:" if field else ""
        super().__init__(f"{path}: {where}:{field_part} {message} [{reason}]")


@dataclasses.dataclass
class ReadResult:
    """records: the records read; skipped: {reason: count} of bad rows skipped;
    filtered: rows left out on request (locale / split / small_version filters)."""
    records: list[dict]
    skipped: dict[str, int]
    filtered: int = 0


class _Row:
    """Where a row is, to name it in errors. reason_prefix tells product-file reasons apart
    from example-file ones in ESCI skip counts ('product_missing_field')."""

    def __init__(self, path: str, where: str, reason_prefix: str = ""):
        self.path, self.where, self.reason_prefix = path, where, reason_prefix

    def bad(self, field: str | None, reason: str, message: str) -> BadRowError:
        return BadRowError(self.path, self.where, field, self.reason_prefix + reason, message)


def _check_on_bad_row(on_bad_row: str) -> None:
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")


def _required_str(obj: dict, key: str, row: _Row) -> str:
    if key not in obj or obj[key] is None:
        raise row.bad(key, "missing_field", "required field is missing")
    value = obj[key]
    if not isinstance(value, str):
        raise row.bad(key, "wrong_type", f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise row.bad(key, "missing_field", "required field is empty")
    return value


def _label(value: Any, row: _Row) -> str:
    if isinstance(value, str) and value in st.LABELS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value in _INT_LABELS:
        return _INT_LABELS[value]
    raise row.bad("label", "unknown_label",
                  f"unknown label {value!r}; expected one of {st.LABELS} or 4/3/2/1")


def _choice(obj: dict, key: str, choices: Sequence[str], row: _Row) -> str:
    value = obj.get(key)
    if value is None:
        return "unknown"
    if not isinstance(value, str):
        raise row.bad(key, "wrong_type", f"expected a string, got {type(value).__name__}")
    if value not in choices:
        raise row.bad(key, f"unknown_{key}", f"unknown value {value!r}; expected one of {choices}")
    return value


def _annotations(value: Any, row: _Row) -> dict[str, list[str]] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise row.bad("annotations", "wrong_type",
                      f"expected an object {{step_name: [facts]}}, got {type(value).__name__}")
    for step, facts in value.items():
        if step not in st.STEP_NAMES:
            raise row.bad("annotations", "bad_annotations",
                          f"unknown step {step!r}; expected one of {st.STEP_NAMES}")
        if not isinstance(facts, list) or not all(isinstance(f, str) for f in facts):
            raise row.bad("annotations", "wrong_type", f"step {step!r}: expected a list of strings")
    try:
        cot.render_steps(value)  # the facts must survive the CoT text format
    except ValueError as e:
        raise row.bad("annotations", "bad_annotations", str(e)) from None
    return {step: list(facts) for step, facts in value.items()}


def _record_from_dict(obj: Any, row: _Row, default_id: str) -> dict:
    """Validates one JSON object and returns the record in the she_jax schema."""
    if not isinstance(obj, dict):
        raise row.bad(None, "not_object", f"expected a JSON object, got {type(obj).__name__}")
    record_id = obj.get("id", default_id)
    if isinstance(record_id, int) and not isinstance(record_id, bool):
        record_id = str(record_id)
    if not isinstance(record_id, str):
        raise row.bad("id", "wrong_type", f"expected a string, got {type(record_id).__name__}")
    if "label" not in obj or obj["label"] is None:
        raise row.bad("label", "missing_field", "required field is missing")
    record = {
        "id": record_id,
        "query": _required_str(obj, "query", row),
        "item_title": _required_str(obj, "item_title", row),
        "label": _label(obj["label"], row),
        "query_type": _choice(obj, "query_type", QUERY_TYPES, row),
        "popularity": _choice(obj, "popularity", POPULARITIES, row),
        "annotations": _annotations(obj.get("annotations"), row),
        "cot": obj.get("cot"),
    }
    if record["cot"] is not None:
        if not isinstance(record["cot"], str):
            raise row.bad("cot", "wrong_type",
                          f"expected a string, got {type(record['cot']).__name__}")
        parsed = cot.parse_cot(record["cot"], "think_first")
        if not parsed.format_valid:
            raise row.bad("cot", "bad_cot",
                          f"not a valid think-first CoT: {'; '.join(parsed.errors)}")
        if parsed.label != record["label"]:
            raise row.bad("cot", "bad_cot", f"CoT label {parsed.label} != label {record['label']}")
    return record


def _collect(rows: Iterable[tuple[_Row, Any]], build, on_bad_row: str) -> ReadResult:
    """Runs `build(row, payload) -> record | None` (None = filtered) over rows."""
    _check_on_bad_row(on_bad_row)
    records, skipped, filtered = [], collections.Counter(), 0
    for row, payload in rows:
        try:
            record = build(row, payload)
        except BadRowError as e:
            if on_bad_row == "error":
                raise
            skipped[e.reason] += 1
            continue
        if record is None:
            filtered += 1
        else:
            records.append(record)
    return ReadResult(records=records, skipped=dict(skipped), filtered=filtered)


def _decode_line(raw: bytes, row: _Row) -> str:
    """One line's bytes as text (UTF-8, strict), or a `bad_utf8` row error naming the first
    bad byte and its 1-based byte column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise row.bad(None, "bad_utf8", f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                      f"column {e.start + 1})") from None


def read_jsonl(path: str, on_bad_row: str = "error") -> ReadResult:
    """Reads records from a JSONL file (blank lines are not rows and are ignored).

    Required fields: query, item_title (non-empty strings), label ('L4'..'L1' or 4..1).
    Optional: id (default '<file name>:<line>'), query_type, popularity (default 'unknown'),
    annotations ({step_name: [facts]}), cot (a valid think-first CoT whose label agrees).
    Other fields are ignored. Lines are decoded one by one (UTF-8; a BOM on line 1 is
    dropped), so a line that is not valid UTF-8 is a bad row like any other ('bad_utf8').
    """
    name = os.path.basename(path)

    def rows() -> Iterator[tuple[_Row, bytes]]:
        # Bytes, decoded line by line: a bad byte is then one bad row (named, or skipped and
        # counted) instead of a UnicodeDecodeError that stops the whole file.
        with open(path, "rb") as f:
            for line_number, line in enumerate(f, start=1):
                if line_number == 1 and line.startswith(codecs.BOM_UTF8):
                    line = line[len(codecs.BOM_UTF8):]  # a BOM is an encoding mark, not text
                if line.strip():
                    yield _Row(path, f"line {line_number}"), (line_number, line)

    def build(row: _Row, payload: tuple[int, bytes]) -> dict:
        line_number, raw = payload
        line = _decode_line(raw, row).rstrip("\r\n")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            # The column is where the parser gave up; the length tells a line cut short (the
            # column at its end) from a bad character in its middle.
            raise row.bad(None, "bad_json", f"invalid JSON ({e.msg} at column {e.colno}; the "
                          f"line has {len(line)} characters)") from None
        return _record_from_dict(obj, row, default_id=f"{name}:{line_number}")

    return _collect(rows(), build, on_bad_row)


def _find_esci_file(directory: str, stem: str) -> str:
    for ext in (".parquet", ".csv"):
        path = os.path.join(directory, stem + ext)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{directory}: neither {stem}.parquet nor {stem}.csv found")


def _read_table(path: str, required: Sequence[str], optional: Sequence[str]
                ) -> tuple[int, dict[str, list], str]:
    """Returns (n_rows, {column: values}, row_kind) for the needed columns of a parquet or
    csv file. row_kind 'row' (parquet: 0-based row index) or 'line' (csv: 1-based line)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        schema_names = pq.read_schema(path).names
        _check_columns(path, schema_names, required)
        wanted = [c for c in (*required, *optional) if c in schema_names]
        table = pq.read_table(path, columns=wanted)
        return table.num_rows, {c: table.column(c).to_pylist() for c in wanted}, "row"
    if path.endswith(".csv"):
        # surrogateescape: a bad byte survives decoding as a lone surrogate, and the cell
        # holding it becomes a 'bad_utf8' row (see _cell_str) instead of stopping the read.
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            _check_columns(path, header, required)
            wanted = [c for c in (*required, *optional) if c in header]
            index = [header.index(c) for c in wanted]
            columns = {c: [] for c in wanted}
            lines, start = [], reader.line_num + 1
            for values in reader:
                # A quoted field may span lines: a row starts right after the previous one ended.
                lines.append(start)
                start = reader.line_num + 1
                for c, i in zip(wanted, index):
                    columns[c].append(values[i] if i < len(values) else None)
        columns["__line__"] = lines
        return len(lines), columns, "line"
    raise ValueError(f"{path}: expected a .parquet or .csv file")


def _check_columns(path: str, present: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns present: {list(present)}")


def _row_at(path: str, kind: str, columns: dict, i: int, reason_prefix: str = "") -> _Row:
    where = f"line {columns['__line__'][i]}" if kind == "line" else f"row {i}"
    return _Row(path, where, reason_prefix)


def _cell_str(value: Any, field: str, row: _Row) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None / NaN
        raise row.bad(field, "missing_field", "value is missing")
    if field == "example_id" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # int64 in the published parquet
    if not isinstance(value, str):
        raise row.bad(field, "wrong_type", f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise row.bad(field, "missing_field", "value is empty")
    bad = next((i for i, ch in enumerate(value) if "\udc80" <= ch <= "\udcff"), None)
    if bad is not None:
        raise row.bad(field, "bad_utf8", f"not valid UTF-8 (byte 0x{ord(value[bad]) - 0xdc00:02x} "
                      f"at character {bad + 1} of the value)")
    return value


def _cell_flag(value: Any, field: str, row: _Row) -> bool:
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return value.strip() == "1"
    if isinstance(value, (int, bool)) and value in (0, 1):
        return bool(value)
    raise row.bad(field, "wrong_type", f"expected 0 or 1, got {value!r}")


def read_esci(dir_or_files: str | Sequence[str], on_bad_row: str = "error",
              locale: str | None = None, small_version: bool = False,
              split: str | None = None) -> ReadResult:
    """Reads the Amazon ESCI shopping-queries data as she_jax records.

    dir_or_files: a directory holding shopping_queries_dataset_{examples,products}.{parquet,csv}
      (parquet preferred), or the (examples_path, products_path) pair.
    locale: keep only this product_locale ('us', 'es', 'jp'); small_version: keep only rows of
      the reduced task-1 set; split: 'train' or 'test'. Rows left out by these filters are
      counted in `filtered`. Records get id 'esci:<example_id>', query_type and popularity
      'unknown', no annotations and no CoT. Bad product rows count under 'product_<reason>'.
    """
    _check_on_bad_row(on_bad_row)
    if isinstance(dir_or_files, (str, os.PathLike)):
        examples_path = _find_esci_file(os.fspath(dir_or_files), ESCI_EXAMPLES)
        products_path = _find_esci_file(os.fspath(dir_or_files), ESCI_PRODUCTS)
    else:
        examples_path, products_path = map(os.fspath, dir_or_files)

    filter_columns = [c for c, on in (("small_version", small_version),
                                      ("split", split is not None)) if on]
    n_examples, ex, ex_kind = _read_table(
        examples_path, (*ESCI_EXAMPLE_COLUMNS, *filter_columns), ())
    n_products, pr, pr_kind = _read_table(products_path, ESCI_PRODUCT_COLUMNS, ())

    def product_rows() -> Iterator[tuple[_Row, int]]:
        for i in range(n_products):
            yield _row_at(products_path, pr_kind, pr, i, reason_prefix="product_"), i

    titles: dict[tuple[str, str], str] = {}

    def add_product(row: _Row, i: int) -> None:  # fills `titles`; no records of its own
        key = (_cell_str(pr["product_id"][i], "product_id", row),
               _cell_str(pr["product_locale"][i], "product_locale", row))
        if locale is not None and key[1] != locale:
            return None
        title = _cell_str(pr["product_title"][i], "product_title", row)
        if key in titles:
            raise row.bad("product_id", "duplicate", f"product {key} appears more than once")
        titles[key] = title

    products = _collect(product_rows(), add_product, on_bad_row)

    def example_rows() -> Iterator[tuple[_Row, int]]:
        for i in range(n_examples):
            yield _row_at(examples_path, ex_kind, ex, i), i

    def build(row: _Row, i: int) -> dict | None:
        product_locale = _cell_str(ex["product_locale"][i], "product_locale", row)
        if locale is not None and product_locale != locale:
            return None
        if small_version and not _cell_flag(ex["small_version"][i], "small_version", row):
            return None
        if split is not None and _cell_str(ex["split"][i], "split", row) != split:
            return None
        example_id = _cell_str(ex["example_id"][i], "example_id", row)
        query = _cell_str(ex["query"][i], "query", row)
        product_id = _cell_str(ex["product_id"][i], "product_id", row)
        esci = ex["esci_label"][i]
        if esci not in ESCI_TO_LABEL:
            raise row.bad("esci_label", "unknown_label",
                          f"unknown ESCI label {esci!r}; expected one of {tuple(ESCI_TO_LABEL)}")
        title = titles.get((product_id, product_locale))
        if title is None:
            raise row.bad("product_id", "orphan_product",
                          f"no product row for ({product_id!r}, {product_locale!r}) in "
                          f"{products_path}")
        return {"id": f"esci:{example_id}", "query": query, "item_title": title,
                "label": ESCI_TO_LABEL[esci], "query_type": "unknown", "popularity": "unknown",
                "annotations": None, "cot": None}

    result = _collect(example_rows(), build, on_bad_row)
    skipped = collections.Counter(products.skipped)
    skipped.update(result.skipped)
    return ReadResult(records=result.records, skipped=dict(skipped), filtered=result.filtered)
