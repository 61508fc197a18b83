r"""Score your own query–item pairs with a trained run: `python -m she_jax.score`.

    python -m she_jax.score --workdir=runs/sft --input=pairs.jsonl --output=scored.jsonl \
        [--beta=0.8] [--explain] [--on_bad_row=skip] [--batch_size=64]

Input: JSONL (`.jsonl`, `.json`, `.ndjson`: one object per line; blank lines are not rows)
or CSV with a header (`.csv`). A row needs `query` and `item_title` (non-empty strings) and
may have `id` (a string or an integer; default `<file name>:<line>`); other fields are
ignored (join the output back on `id`).

Output: one JSON object per line, in input order: `id`, `query`, `item_title`, `probs`
({"L4", "L3", "L2", "L1"}: the label distribution), `label`, `tier` (CumPT at --beta: Good,
Mid or Bad; she_jax.eval.deploy), `mode`, and with --explain `explanation`. It is written to
`<output>.partial` and renamed to `<output>` once every row is in. A progress bar (pairs
scored, pairs/s) goes to stderr; the summary line (pairs, mode, pairs/s, skipped rows by
reason) to stdout.

Modes, by the run's CoT order (eval.json meta.order):
  * answer_first_prefill: the distribution over the 4 label tokens after the prompt's
    prefill alone (`sampling.score_labels`, the serving form); `label` is its argmax. With
    --explain the chain of thought after that label is greedy-decoded (post-CoT).
  * think_first_decode: the chain of thought is greedy-decoded first and the distribution
    read where the model wrote its label (one more forward), so every pair is decoded
    (slower); `label` is the label the model wrote (null if it wrote none); --explain adds
    the decoded text at no extra cost.

Streaming: rows are read lazily, a window of --window_batches batches at a time; a window is
scored in batches of --batch_size prompts of similar length (sorted, so that a batch pads to
a short length bucket) and written, in input order, before the next window is read, so
memory does not grow with the input. Every batch has --batch_size rows (a short one is
filled with copies of its first row, whose results are dropped) and prompts are padded to
bucketed lengths (`sampling.bucket_length`), so the compiled programs are reused from batch
to batch.

Bad rows are handled as by she_jax.data.readers: a row that is not a JSON object, lacks a
field, has a wrong type, bytes that are not UTF-8, or a prompt longer than the model takes is
an error naming file, line and field, or with --on_bad_row=skip is skipped and counted by
reason (the counts are printed at the end and returned by `score_file`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from absl import app, flags
import jax
import numpy as np
import tqdm

from she_jax import run_dir as run_dir_lib, sampling, special_tokens as st
from she_jax.data import cot
from she_jax.data.readers import ON_BAD_ROW, BadRowError
from she_jax.eval import deploy
from she_jax.models import hf

ANSWER_FIRST_MODE = "answer_first_prefill"
THINK_FIRST_MODE = "think_first_decode"
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv",)
REQUIRED_FIELDS = ("query", "item_title")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One input row: its id, the two texts, and where it is (for errors)."""

    id: str
    query: str
    item_title: str
    path: str
    where: str  # 'line N'


# ------------------------------------------------------------------------------ reading


def _text_field(obj: Mapping[str, Any], key: str, path: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        raise BadRowError(path, where, key, "missing_field", "required field is missing")
    if not isinstance(value, str):
        raise BadRowError(path, where, key, "wrong_type",
                          f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise BadRowError(path, where, key, "missing_field", "required field is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # CSV lines are decoded with surrogateescape (see _csv_rows)
        raise BadRowError(path, where, key, "bad_encoding",
                          "holds bytes that are not UTF-8") from None
    return value


def _pair(obj: Any, path: str, where: str, line: int) -> Pair:
    if not isinstance(obj, dict):
        raise BadRowError(path, where, None, "not_object",
                          f"expected a JSON object, got {type(obj).__name__}")
    row_id = obj.get("id")
    if row_id is None or row_id == "":
        row_id = f"{os.path.basename(path)}:{line}"
    elif isinstance(row_id, int) and not isinstance(row_id, bool):
        row_id = str(row_id)
    else:
        row_id = _text_field(obj, "id", path, where)
    return Pair(row_id, _text_field(obj, "query", path, where),
                _text_field(obj, "item_title", path, where), path, where)


def _jsonl_rows(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) per non-blank line; `_jsonl_object` decodes and parses it,
    so bytes that are not UTF-8 make that line a bad row, not the whole read."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            if raw.strip():
                yield line_number, raw


def _jsonl_object(raw: bytes, path: str, where: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRowError(path, where, None, "bad_encoding",
                          f"byte {e.start} is not UTF-8 ({e.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRowError(path, where, None, "bad_json",
                          f"invalid JSON ({e.msg} at column {e.colno} of a "
                          f"{len(text.rstrip())}-character line)") from None


def _csv_rows(path: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(first line, {column: value}) per CSV record after the header."""
    # Bytes that are not UTF-8 become lone surrogates (surrogateescape), so the CSV parser
    # keeps its place; a used field holding one is a bad row (_text_field).
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty CSV file; expected a header line with columns "
                             f"{', '.join(REQUIRED_FIELDS)} (and optionally id)")
        missing = [c for c in REQUIRED_FIELDS if c not in header]
        if missing:
            raise ValueError(f"{path}: line 1: the header lacks column(s) {missing}; columns "
                             f"present: {header}")
        start = reader.line_num + 1
        for values in reader:
            # A quoted field may span lines: a record starts right after the previous one.
            line, start = start, reader.line_num + 1
            if any(v.strip() for v in values):  # a blank line is not a row
                yield line, dict(zip(header, values))


def read_pairs(path: str, on_bad_row: str = "error",
               skipped: collections.Counter | None = None) -> Iterator[Pair]:
    """Lazily reads the pairs of a JSONL or CSV file (the module docstring's format).

    A bad row raises BadRowError (file, line, field) with on_bad_row='error'; with 'skip'
    it is left out and counted in `skipped` under its reason.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such input file")
    suffix = os.path.splitext(path)[1].lower()
    is_jsonl = suffix in JSONL_SUFFIXES
    if not is_jsonl and suffix not in CSV_SUFFIXES:
        raise ValueError(f"{path}: unknown input format {suffix!r}; expected JSONL "
                         f"({', '.join(JSONL_SUFFIXES)}) or CSV ({', '.join(CSV_SUFFIXES)})")
    skipped = collections.Counter() if skipped is None else skipped
    for line, row in (_jsonl_rows(path) if is_jsonl else _csv_rows(path)):
        where = f"line {line}"
        try:
            yield _pair(_jsonl_object(row, path, where) if is_jsonl else row, path, where, line)
        except BadRowError as e:
            if on_bad_row == "error":
                raise
            skipped[e.reason] += 1


# ------------------------------------------------------------------------------ scoring


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
    """beta: CumPT threshold in (0, 1]; explain: add the decoded CoT; batch_size: pairs per
    compiled batch; max_new_tokens: the CoT decode budget; on_bad_row: 'error' | 'skip';
    window_batches: batches read ahead and sorted by prompt length, so that a batch's
    prompts share a length bucket (less padding); memory grows with it, not the input."""

    beta: float
    explain: bool = False
    batch_size: int = 64
    max_new_tokens: int = 128
    on_bad_row: str = "error"
    window_batches: int = 8

    def __post_init__(self):
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 2:
            raise ValueError(f"max_new_tokens must be >= 2 (a label and a token of CoT), "
                             f"got {self.max_new_tokens}")
        if self.on_bad_row not in ON_BAD_ROW:
            raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {self.on_bad_row!r}")
        if self.window_batches < 1:
            raise ValueError(f"window_batches must be >= 1, got {self.window_batches}")


def mode_of(order: str) -> str:
    """The scoring mode of a run trained in CoT `order`."""
    return ANSWER_FIRST_MODE if order == "answer_first" else THINK_FIRST_MODE


class Scorer:
    """Scores batches of pairs with one loaded run (see the module docstring)."""

    def __init__(self, run: run_dir_lib.Run, options: ScoreOptions):
        self.run, self.options = run, options
        self.mode = mode_of(run.order)
        self.label_ids = list(run.tokenizer.label_ids)
        self.sampler = sampling.Sampler(run.model_config, sampling.SamplingConfig(
            temperature=0.0, eos_id=run.tokenizer.eos_id, pad_id=run.tokenizer.pad_id))
        decodes = self.mode == THINK_FIRST_MODE or options.explain
        # Prompt tokens the model takes: decoding needs room for the CoT after the prompt.
        self.max_prompt_len = (run.model_config.max_seq_len
                               - (options.max_new_tokens if decodes else 0))

    def encode(self, pairs: list[Pair], skipped: collections.Counter
               ) -> tuple[list[Pair], list[list[int]]]:
        """Prompt ids of each pair; an overlong one is a bad row (raised or counted)."""
        prompts = [cot.render_prompt(p.query, p.item_title) for p in pairs]
        kept, ids = [], []
        for pair, prompt_ids in zip(pairs, self.run.tokenizer.encode_batch(prompts)):
            if len(prompt_ids) > self.max_prompt_len:
                error = BadRowError(
                    pair.path, pair.where, None, "too_long",
                    f"the prompt has {len(prompt_ids)} tokens; the model takes "
                    f"{self.max_prompt_len} (max_seq_len {self.run.model_config.max_seq_len}"
                    + (f" minus {self.options.max_new_tokens} decoded tokens)"
                       if self.max_prompt_len < self.run.model_config.max_seq_len else ")"))
                if self.options.on_bad_row == "error":
                    raise error
                skipped[error.reason] += 1
                continue
            kept.append(pair)
            ids.append(prompt_ids)
        return kept, ids

    def score_batch(self, prompt_ids: list[list[int]]
                    ) -> tuple[np.ndarray, list[str | None], list[str] | None]:
        """probs [n, 4] (LABELS order), labels [n], explanations [n] (None unless needed)
        for n <= batch_size prompts (token id lists)."""
        n = len(prompt_ids)
        # Fixed batch shape: filler rows repeat the first prompt; their results are dropped.
        rows = list(prompt_ids) + [prompt_ids[0]] * (self.options.batch_size - n)
        params, model_config = self.run.params, self.run.model_config
        rng = jax.random.PRNGKey(0)  # greedy: the key is not used for choices
        if self.mode == ANSWER_FIRST_MODE:
            probs = np.asarray(sampling.score_labels(model_config, params, rows, None,
                                                     self.label_ids))
            labels = [st.LABELS[int(i)] for i in probs.argmax(axis=1)[:n]]
            if not self.options.explain:
                return probs[:n], labels, None
            label_tokens = np.asarray(self.label_ids)[probs.argmax(axis=1)]
            out = self.sampler(params, [r + [int(t)] for r, t in zip(rows, label_tokens)], rng,
                               max_new_tokens=self.options.max_new_tokens - 1)
            tokens, lengths = np.asarray(out.tokens[:, 0]), np.asarray(out.lengths[:, 0])
            texts = [self.run.tokenizer.decode(tokens[r, :lengths[r]], skip_special=True)
                     for r in range(n)]
            return probs[:n], labels, texts
        out = self.sampler(params, rows, rng, max_new_tokens=self.options.max_new_tokens)
        generated, lengths = np.asarray(out.tokens[:, 0]), np.asarray(out.lengths[:, 0])
        labels, before_label = [], []
        for r, prompt in enumerate(rows):
            written = generated[r, :lengths[r]]
            at = np.flatnonzero(np.isin(written, self.label_ids))
            # The label's distribution is the next-token one after the tokens before it
            # (after the whole output when the model wrote no label).
            cut = int(at[0]) if at.size else len(written)
            before_label.append(prompt + written[:cut].tolist())
            labels.append(st.LABELS[self.label_ids.index(int(written[cut]))] if at.size
                          else None)
        probs = np.asarray(sampling.score_labels(model_config, params, before_label, None,
                                                 self.label_ids))
        texts = [self.run.tokenizer.decode(generated[r, :lengths[r]], skip_special=True)
                 for r in range(n)]
        return probs[:n], labels[:n], texts

    def score(self, pairs: Iterable[Pair], out: IO[str],
              skipped: collections.Counter | None = None,
              progress: tqdm.tqdm | None = None) -> int:
        """Scores `pairs` a window (window_batches batches) at a time, writing one JSON line
        per pair to `out`, in input order, as each window finishes. Returns the number of
        pairs written."""
        skipped = collections.Counter() if skipped is None else skipped
        window_size = self.options.batch_size * self.options.window_batches
        iterator, written = iter(pairs), 0
        while window := list(itertools.islice(iterator, window_size)):
            window, prompt_ids = self.encode(window, skipped)
            rows: list[dict] = [{} for _ in window]
            # Batches of similar lengths; each result goes back to its row.
            by_length = np.argsort([len(ids) for ids in prompt_ids], kind="stable")
            for start in range(0, len(window), self.options.batch_size):
                members = by_length[start:start + self.options.batch_size]
                probs, labels, texts = self.score_batch([prompt_ids[i] for i in members])
                tiers = deploy.cumpt_tiers(probs, self.options.beta)
                for k, i in enumerate(members):
                    pair = window[i]
                    rows[i] = {"id": pair.id, "query": pair.query, "item_title": pair.item_title,
                               "probs": {name: round(float(p), 6)
                                         for name, p in zip(st.LABELS, probs[k])},
                               "label": labels[k], "tier": deploy.TIERS[tiers[k]],
                               "mode": self.mode}
                    if self.options.explain:
                        rows[i]["explanation"] = texts[k]
                if progress is not None:
                    progress.update(len(members))
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            written += len(rows)
        return written


def score_file(workdir: str, input_path: str, output_path: str, *, beta: float | None = None,
               explain: bool = False, batch_size: int = 64, max_new_tokens: int | None = None,
               on_bad_row: str = "error", window_batches: int = 8,
               show_progress: bool = True) -> dict[str, Any]:
    """Scores every pair of `input_path` with the run in `workdir` into `output_path`.

    The options are ScoreOptions'; beta and max_new_tokens default to the run's eval.beta
    and eval.max_new_tokens. The run is loaded (and its tokenizer checked against its
    model) before the input is read.
    Returns {'output', 'mode', 'scored', 'skipped' ({reason: count}), 'seconds',
    'pairs_per_second'}.
    """
    run = run_dir_lib.load_run(workdir)
    options = ScoreOptions(
        beta=run.config.eval.beta if beta is None else beta, explain=explain,
        batch_size=batch_size, on_bad_row=on_bad_row, window_batches=window_batches,
        max_new_tokens=(run.config.eval.max_new_tokens if max_new_tokens is None
                        else max_new_tokens))
    scorer = Scorer(run, options)
    skipped: collections.Counter = collections.Counter()
    partial = output_path + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    start = time.perf_counter()
    try:
        with open(partial, "w", encoding="utf-8") as out, tqdm.tqdm(
                unit="pair", desc=f"scoring ({scorer.mode})", disable=not show_progress) as bar:
            scored = scorer.score(read_pairs(input_path, on_bad_row, skipped), out, skipped,
                                  bar)
    except BaseException:
        os.remove(partial)  # no half-written output left behind to be taken for a result
        raise
    seconds = time.perf_counter() - start
    os.replace(partial, output_path)
    return {"output": output_path, "mode": scorer.mode, "scored": scored,
            "skipped": dict(skipped), "seconds": seconds,
            "pairs_per_second": scored / seconds if seconds > 0 else float("nan")}


# ------------------------------------------------------------------------------ command line


def _define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program: the
    library must stay importable beside other absl programs' flags (e.g. she_jax.eval's
    --workdir) in one process."""
    flags.DEFINE_string("workdir", None, "A finished run directory.", required=True)
    flags.DEFINE_string("input", None, "Pairs to score: .jsonl or .csv.", required=True)
    flags.DEFINE_string("output", None, "Where to write the scored JSONL.", required=True)
    flags.DEFINE_float("beta", None, "CumPT threshold (default: the run's eval.beta).")
    flags.DEFINE_bool("explain", False, "Add the decoded chain of thought.")
    flags.DEFINE_integer("batch_size", 64, "Pairs per batch.")
    flags.DEFINE_integer("window_batches", 8, "Batches read ahead and sorted by prompt "
                         "length (less padding).")
    flags.DEFINE_integer("max_new_tokens", None, "CoT decode budget (default: the run's "
                         "eval.max_new_tokens).")
    flags.DEFINE_enum("on_bad_row", "error", ON_BAD_ROW, "error: stop at a bad row, naming "
                      "file and line; skip: skip and count it.")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    try:
        result = score_file(f.workdir, f.input, f.output, beta=f.beta, explain=f.explain,
                            batch_size=f.batch_size, window_batches=f.window_batches,
                            max_new_tokens=f.max_new_tokens, on_bad_row=f.on_bad_row)
    except (BadRowError, run_dir_lib.TokenizerMismatchError, hf.CheckpointError,
            FileNotFoundError) as e:
        # The user's input or run directory, not she_jax: the message says what to fix.
        raise SystemExit(f"she_jax.score: {e}") from None
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(result["skipped"].items())) or "none"
    print(f"scored {result['scored']} pairs ({result['mode']}) into {result['output']} in "
          f"{result['seconds']:.1f} s ({result['pairs_per_second']:.1f} pairs/s); skipped: "
          f"{skipped}", flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
