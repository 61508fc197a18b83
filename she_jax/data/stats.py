r"""Dataset statistics: size, label mix and its CV, query types, popularity, CoT lengths.

  python -m she_jax.data.stats --split=rl [--world=tiny|small]   # ShopWorld (default)
  python -m she_jax.data.stats --jsonl=data.jsonl [--on_bad_row=skip]
  python -m she_jax.data.stats --esci_dir=DIR [--esci_locale=us]   # ESCI parquet or csv
  ... --json                         # one JSON object instead of the text report
  ... --tokenizer=DIR                # count CoT tokens with this tokenizer

labels_by_query_type holds the label counts within each query type (the report prints
their mixes): a mixed split whose types differ in label mix teaches a per-type prior.
label_cv is the coefficient of variation of the four label counts (L1..L4, zeros included):
population std / mean — 0 for a perfectly balanced set (TaoSR1 found lower CV trains better).
CoT token lengths are of the think-first CoT text (the record's `cot`, else its annotations
rendered), without EOS — `cot_tokens` holds p50/p90/p99/max and `records` (how many
records have a CoT) — under the she_jax SentencePiece tokenizer trained on the ShopWorld
corpus (cached under --cache_dir) unless --tokenizer is given; null when no record has a CoT.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np
from absl import flags

from she_jax import cli, special_tokens as st
from she_jax.data import cot, readers

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "she_jax")
PERCENTILES = (50, 90, 99)


def cot_text(record: Mapping) -> str | None:
    """The think-first CoT text of a record, or None if it has none."""
    if record.get("cot"):
        return record["cot"]
    if record.get("annotations"):
        return cot.render_cot(record["annotations"], record["label"], "think_first")
    return None


def compute_stats(records: Sequence[Mapping], tokenizer=None,
                  skipped: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The statistics of `records` as a JSON-ready dict (see module docstring for keys).

    tokenizer: anything with encode_batch(texts) -> ids; needed only if some record has a CoT.
    """
    labels = collections.Counter(r["label"] for r in records)
    by_type = collections.Counter((r.get("query_type", "unknown"), r["label"]) for r in records)
    counts = np.array([labels.get(label, 0) for label in sorted(st.LABELS)], dtype=np.float64)
    cv = float(counts.std() / counts.mean()) if counts.sum() else None
    texts = [t for t in map(cot_text, records) if t is not None]
    cot_tokens = None
    if texts:
        if tokenizer is None:
            raise ValueError(f"{len(texts)} records have a CoT: "
                             "a tokenizer is needed to count tokens")
        lengths = np.array([len(ids) for ids in tokenizer.encode_batch(texts)])
        cot_tokens = {f"p{q}": float(np.percentile(lengths, q)) for q in PERCENTILES}
        cot_tokens["max"] = int(lengths.max())
        cot_tokens["records"] = len(texts)
    return {
        "size": len(records),
        "label_counts": {label: int(labels.get(label, 0)) for label in sorted(st.LABELS)},
        "label_cv": cv,
        "query_types": dict(sorted(collections.Counter(r.get("query_type", "unknown")
                                                       for r in records).items())),
        "popularity": dict(sorted(collections.Counter(r.get("popularity", "unknown")
                                                      for r in records).items())),
        # The label counts within each query type: a split whose types hold different label
        # mixes teaches a per-type prior (ShopWorld's mixed splits fill each label by
        # rejection over the types; its single-type test splits hold the overall mix).
        "labels_by_query_type": {
            qtype: {label: by_type[qtype, label] for label in sorted(st.LABELS)}
            for qtype in sorted({qtype for qtype, _ in by_type})},
        "cot_tokens": cot_tokens,
        "skipped": dict(skipped or {}),
    }


def format_report(stats: Mapping[str, Any], source: str) -> str:
    """The human-readable report (an empty source says so instead of its mix)."""
    size = stats["size"]

    def mix(counts: Mapping[str, int]) -> str:
        if not size:
            return "- (no records)"
        return ", ".join(f"{k} {n} ({100 * n / size:.1f}%)" for k, n in counts.items()) or "-"

    cv = stats["label_cv"]
    lines = [
        f"source:      {source}",
        f"size:        {size}",
        f"labels:      {mix(dict(sorted(stats['label_counts'].items(), reverse=True)))}",
        f"label CV:    {'n/a' if cv is None else f'{cv:.3f}'} (population std / mean of L1..L4)",
        f"query types: {mix(stats['query_types'])}",
        f"popularity:  {mix(stats['popularity'])}",
    ]
    by_type = stats.get("labels_by_query_type") or {}
    if len(by_type) > 1:  # one type: its mix is the labels line above
        lines.append("labels by query type (L4 / L3 / L2 / L1 %):")
        for qtype, counts in by_type.items():
            n = sum(counts.values())
            shares = " / ".join(f"{100 * counts.get(label, 0) / n:.0f}"
                                for label in reversed(sorted(st.LABELS)))
            lines.append(f"  {qtype:<12} {shares}  (n={n})")
    tokens = stats["cot_tokens"]
    if tokens is None:
        lines.append("CoT tokens:  no CoT in the data")
    else:
        lines.append(f"CoT tokens:  p50 {tokens['p50']:.0f}, p90 {tokens['p90']:.0f}, "
                     f"p99 {tokens['p99']:.0f}, max {tokens['max']} ({tokens['records']} records)")
    skipped = stats["skipped"]
    lines.append("skipped:     " + (", ".join(f"{k} {n}" for k, n in sorted(skipped.items()))
                                    if skipped else "none"))
    return "\n".join(lines)


def world_tokenizer(world: str, cache_dir: str, vocab_size: int,
                    splits: Mapping[str, Sequence[Mapping]] | None = None):
    """The SentencePiece tokenizer trained on the ShopWorld corpus (the world's vocabulary and
    every split's texts), cached on disk. splits: the generated splits, if already at hand."""
    from she_jax import tokenizer as tokenizer_lib
    from she_jax.data import shopworld
    path = os.path.join(cache_dir, "tokenizers", f"shopworld_{world}_vocab{vocab_size}")
    if os.path.exists(os.path.join(path, tokenizer_lib.CONFIG_FILE)):
        return tokenizer_lib.load_tokenizer(path)
    config = shopworld.WorldConfig.preset(world)
    if splits is None:
        splits = shopworld.generate_splits(config)
    corpus = itertools.chain(shopworld.tokenizer_corpus(shopworld.build_world(config)),
                             shopworld.tokenizer_corpus(splits))
    return tokenizer_lib.train_sentencepiece(corpus, vocab_size, path)


def _flag_values() -> flags.FlagValues:
    # Own FlagValues, so that importing this module (or calling main in a test or notebook)
    # leaves absl's global FLAGS alone.
    fv = flags.FlagValues()
    flags.DEFINE_string("split", "rl", "ShopWorld split.", flag_values=fv)
    flags.DEFINE_enum("world", "tiny", ["tiny", "small", "full"], "ShopWorld size.", flag_values=fv)
    flags.DEFINE_string("jsonl", None, "A she_jax JSONL file instead of ShopWorld.", flag_values=fv)
    flags.DEFINE_string("esci_dir", None, "A folder with the ESCI files (parquet or csv).",
                        flag_values=fv)
    flags.DEFINE_string("esci_locale", None, "ESCI product_locale filter (us, es, jp).",
                        flag_values=fv)
    flags.DEFINE_enum("on_bad_row", "error", list(readers.ON_BAD_ROW), "Bad rows: raise or skip.",
                      flag_values=fv)
    flags.DEFINE_string("tokenizer", None,
                        "Tokenizer directory (default: ShopWorld SentencePiece).", flag_values=fv)
    flags.DEFINE_integer("vocab_size", 4096, "Vocab of the default ShopWorld tokenizer.",
                         flag_values=fv)
    flags.DEFINE_string("cache_dir", os.environ.get("SHE_JAX_CACHE", DEFAULT_CACHE_DIR),
                        "Where the default tokenizer is cached.", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print one JSON object.", flag_values=fv)
    return fv


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Parses argv (argv[0] is the program name), prints the report, returns the stats."""
    fv = _flag_values()
    cli.parse_flags(fv, argv, __doc__)
    if fv.jsonl and fv.esci_dir:
        sys.exit("--jsonl and --esci_dir are exclusive")
    splits = None
    try:
        if fv.jsonl:
            result, source = readers.read_jsonl(fv.jsonl, on_bad_row=fv.on_bad_row), fv.jsonl
        elif fv.esci_dir:
            result = readers.read_esci(fv.esci_dir, on_bad_row=fv.on_bad_row, locale=fv.esci_locale)
            source = fv.esci_dir
        else:
            from she_jax.data import shopworld
            if fv.split not in shopworld.SPLITS:
                sys.exit(f"unknown split {fv.split!r}; ShopWorld splits: {shopworld.SPLITS}")
            splits = shopworld.generate_splits(shopworld.WorldConfig.preset(fv.world))
            result = readers.ReadResult(records=splits[fv.split], skipped={})
            source = f"shopworld {fv.world} / {fv.split}"
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    tokenizer = None
    if any(cot_text(r) is not None for r in result.records):
        from she_jax import tokenizer as tokenizer_lib
        tokenizer = (tokenizer_lib.load_tokenizer(fv.tokenizer) if fv.tokenizer else
                     world_tokenizer(fv.world, fv.cache_dir, fv.vocab_size, splits))
    stats = compute_stats(result.records, tokenizer, result.skipped)
    if not result.records:
        # On stderr, so that --json output stays one JSON object.
        skipped = sum(result.skipped.values())
        print(f"warning: {source} has no records" + (
            f" ({skipped} bad rows skipped: {dict(result.skipped)})" if skipped else
            " (no rows in the file)" if fv.jsonl else ""), file=sys.stderr)
    print(json.dumps(stats, sort_keys=True) if fv.json else format_report(stats, source))
    return stats


if __name__ == "__main__":
    main(sys.argv)
