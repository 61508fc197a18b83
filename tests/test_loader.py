"""Tests for she_jax.data.loader: fixed shapes, loss mask, shuffling, exact resume."""

import random

import numpy as np
import pytest

from she_jax import special_tokens as st
from she_jax.data import cot, loader
from she_jax.tokenizer import train_sentencepiece

BUCKETS = (32, 64, 128)


def make_records(n=40, seed=0):
    rng = random.Random(seed)
    records = []
    for i in range(n):
        label = rng.choice(st.LABELS)
        annotations = {
            "query": [f"category: shoes {i}"] * (1 + i % 4),
            "item": ["brand: nike", "color: red"][: 1 + i % 2],
            "category_match": ["category match: exact"],
            "attribute_match": [],
            "judgment": [f"label: {label}"],
        }
        records.append({
            "id": f"r{i}", "query": f"red shoes {i} " * (1 + i % 3), "item_title": f"Nike shoe {i}",
            "label": label, "query_type": "category", "popularity": "head",
            # Every third record has no CoT: its target is the bare label token.
            "annotations": annotations if i % 3 else None, "cot": None})
    return records


@pytest.fixture(scope="module")
def records():
    return make_records()


@pytest.fixture(scope="module")
def tokenizer(records, tmp_path_factory):
    texts = [cot.render_prompt(r["query"], r["item_title"]) + cot.render_target(r, order)
             for r in records for order in cot.ORDERS]
    return train_sentencepiece(texts * 3, 350, tmp_path_factory.mktemp("tok"))


def all_batches(dataset):
    return [dataset[k] for k in range(len(dataset))]


@pytest.mark.parametrize("order", cot.ORDERS)
def test_sft_batches_fixed_shapes_and_exact_loss_mask(records, tokenizer, order):
    ds = loader.sft_dataset(records, tokenizer, batch_size=4, buckets=BUCKETS, order=order,
                            drop_remainder=False)
    seen = []
    for batch in all_batches(ds):
        T = batch["tokens"].shape[1]
        assert T in BUCKETS
        assert {k: v.shape for k, v in batch.items()} == {
            "tokens": (4, T), "loss_mask": (4, T), "attention_mask": (4, T), "labels": (4,),
            "prompt_len": (4,), "example_mask": (4,), "index": (4,)}
        assert batch["tokens"].dtype == np.int32 and batch["loss_mask"].dtype == bool
        for row in range(4):
            i = int(batch["index"][row])
            if not batch["example_mask"][row]:
                assert i == -1 and not batch["attention_mask"][row].any()
                assert not batch["loss_mask"][row].any() and batch["labels"][row] == -1
                continue
            seen.append(i)
            record, tokens = records[i], batch["tokens"][row]
            n = int(batch["attention_mask"][row].sum())
            assert batch["attention_mask"][row, :n].all()  # right padding
            assert (tokens[n:] == tokenizer.pad_id).all()
            assert BUCKETS[BUCKETS.index(T) - 1] < n if T != BUCKETS[0] else n <= T  # smallest fit
            p = int(batch["prompt_len"][row])
            assert tokenizer.decode(tokens[:p]) == cot.render_prompt(record["query"],
                                                                     record["item_title"])
            # The loss covers exactly the target and EOS: positions p..n-1.
            assert np.array_equal(np.flatnonzero(batch["loss_mask"][row]), np.arange(p, n))
            assert tokenizer.decode(tokens[p:n]) == cot.render_target(record, order) + st.EOS
            first_target = tokens[p]
            if order == "answer_first" or record["annotations"] is None:
                assert first_target == tokenizer.label_ids[st.LABELS.index(record["label"])]
            else:
                assert first_target == tokenizer.step_marker_ids[0]
            assert batch["labels"][row] == st.LABELS.index(record["label"])
    assert sorted(seen) == list(range(len(records)))  # every record exactly once


def test_drop_remainder_gives_full_batches_of_one_bucket(records, tokenizer):
    ds = loader.sft_dataset(records, tokenizer, batch_size=4, buckets=BUCKETS, num_epochs=3)
    assert len(ds) == 3 * ds.batches_per_epoch
    for batch in all_batches(ds):
        assert batch["example_mask"].all()
    shapes = {batch["tokens"].shape for batch in all_batches(ds)}
    assert len(shapes) <= len(BUCKETS)


def test_shuffle_is_deterministic_by_seed_and_differs_by_epoch(records, tokenizer):
    def order(seed):
        ds = loader.sft_dataset(records, tokenizer, batch_size=4, buckets=BUCKETS, seed=seed,
                                num_epochs=2)
        return [tuple(b["index"]) for b in all_batches(ds)], ds.batches_per_epoch

    (first, n), (again, _), (other, _) = order(0), order(0), order(1)
    assert first == again
    assert first != other
    assert first[:n] != first[n:]  # epoch 2 is reshuffled
    for epoch in (first[:n], first[n:]):  # each epoch: distinct records, equally many
        flat = sum(epoch, ())
        assert len(set(flat)) == len(flat) == 4 * n


def test_resume_from_grain_state_and_from_position(records, tokenizer):
    def build():
        return loader.sft_dataset(records, tokenizer, batch_size=4, buckets=BUCKETS, seed=3,
                                  num_epochs=None)

    it = build().iterator()
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(12)]  # crosses into the next epochs
    resumed = build().iterator(state)
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    by_position = build()
    assert all(np.array_equal(by_position[5 + j]["tokens"], expected[j]["tokens"])
               for j in range(12))


def test_prompt_batches_left_padded_and_complete(records, tokenizer):
    ds = loader.prompt_dataset(records, tokenizer, batch_size=8, buckets=(16, 32, 64))
    seen = []
    for batch in all_batches(ds):
        T = batch["tokens"].shape[1]
        assert T in (16, 32, 64) and batch["tokens"].shape == (8, T)
        for row in np.flatnonzero(batch["example_mask"]):
            i = int(batch["index"][row])
            seen.append(i)
            p = int(batch["prompt_len"][row])
            assert (batch["attention_mask"][row].sum() == p
                    and batch["attention_mask"][row, T - p:].all())
            assert batch["tokens"][row, -1] == tokenizer.answer_id
            assert tokenizer.decode(batch["tokens"][row, T - p:]) == cot.render_prompt(
                records[i]["query"], records[i]["item_title"])
        first = int(np.flatnonzero(batch["example_mask"])[0])
        for row in np.flatnonzero(~batch["example_mask"]):  # filler: a valid copy of a real row
            assert batch["index"][row] == -1 and batch["labels"][row] == -1
            assert np.array_equal(batch["tokens"][row], batch["tokens"][first])
            assert np.array_equal(batch["attention_mask"][row], batch["attention_mask"][first])
    assert sorted(seen) == list(range(len(records)))


def test_overlong_error_and_skip(records, tokenizer):
    with pytest.raises(ValueError, match="longer than the largest bucket"):
        loader.sft_dataset(records, tokenizer, batch_size=2, buckets=(40,))
    ds = loader.sft_dataset(records, tokenizer, batch_size=2, buckets=(40,), overlong="skip",
                            drop_remainder=False)
    kept = [i for b in all_batches(ds) for i in b["index"] if i >= 0]
    assert ds.num_skipped > 0 and len(kept) + ds.num_skipped == len(records)


def test_bad_arguments(records, tokenizer):
    with pytest.raises(ValueError, match="buckets"):
        loader.sft_dataset(records, tokenizer, batch_size=2, buckets=(64, 32))
    with pytest.raises(ValueError, match="label"):
        loader.prompt_dataset([dict(records[0], label="L9")], tokenizer, batch_size=2)


def test_shopworld_records_through_both_orders(tmp_path):
    from she_jax.data import shopworld
    splits = shopworld.generate_splits(
        shopworld.WorldConfig.preset("tiny", sft_size=60, rl_size=10, dev_size=10, test_size=5))
    tok = train_sentencepiece(shopworld.tokenizer_corpus(splits), 600, tmp_path / "tok")
    for order in cot.ORDERS:
        ds = loader.sft_dataset(splits["sft"], tok, batch_size=8, order=order, drop_remainder=False)
        for batch in all_batches(ds):
            for row in np.flatnonzero(batch["example_mask"]):
                target = batch["tokens"][row][batch["loss_mask"][row]]
                assert target[-1] == tok.eos_id
                parsed = cot.parse_cot(tok.decode(target[:-1]), order)
                record = splits["sft"][batch["index"][row]]
                assert parsed.format_valid and parsed.label == record["label"]
                assert parsed.steps == record["annotations"]


def test_several_orders_put_every_record_once_per_order_in_an_epoch(records, tokenizer):
    orders = ("answer_first", "think_first")
    ds = loader.sft_dataset(records, tokenizer, batch_size=4, buckets=BUCKETS, order=orders,
                            drop_remainder=False, seed=5)
    n = len(records)
    seen = []
    for batch in all_batches(ds):
        for row in np.flatnonzero(batch["example_mask"]):
            k = int(batch["index"][row])
            order, record = orders[k // n], records[k % n]
            p = int(batch["prompt_len"][row])
            length = int(batch["attention_mask"][row].sum())
            assert tokenizer.decode(batch["tokens"][row, p:length]) == \
                cot.render_target(record, order) + st.EOS
            assert batch["labels"][row] == st.LABELS.index(record["label"])
            seen.append(k)
    assert sorted(seen) == list(range(2 * n))
    one = loader.sft_dataset(records, tokenizer, batch_size=4, buckets=BUCKETS,
                             order="think_first", drop_remainder=False)
    assert ds.batches_per_epoch > one.batches_per_epoch
    with pytest.raises(ValueError, match="distinct"):
        loader.sft_dataset(records, tokenizer, batch_size=4, buckets=BUCKETS,
                           order=("think_first", "think_first"))


def test_checks_order_swaps_the_prompt_cue_and_keeps_the_served_prompts(records, tokenizer):
    annotated = [r for r in records if r["annotations"]]
    orders = ("answer_first", cot.CHECKS)
    ds = loader.sft_dataset(annotated, tokenizer, batch_size=4, buckets=BUCKETS, order=orders,
                            drop_remainder=False, seed=1)
    n, seen = len(annotated), []
    for batch in all_batches(ds):
        for row in np.flatnonzero(batch["example_mask"]):
            k = int(batch["index"][row])
            order, record = orders[k // n], annotated[k % n]
            p = int(batch["prompt_len"][row])
            length = int(batch["attention_mask"][row].sum())
            assert tokenizer.decode(batch["tokens"][row, :p]) == \
                cot.render_training_prompt(record, order)
            assert batch["tokens"][row, p - 1] == (
                tokenizer.step_marker_ids[2] if order == cot.CHECKS else tokenizer.answer_id)
            assert tokenizer.decode(batch["tokens"][row, p:length]) == \
                cot.render_target(record, order) + st.EOS
            assert batch["loss_mask"][row].sum() == length - p
            seen.append(k)
    assert sorted(seen) == list(range(2 * n))


def _batched_lengths(dataset):
    """{record index: real tokens} over every batch of a dataset."""
    return {int(b["index"][r]): int(b["attention_mask"][r].sum())
            for b in all_batches(dataset) for r in np.flatnonzero(b["example_mask"])}


@pytest.mark.parametrize("order", [None, "think_first", ("answer_first", "think_first")])
def test_record_lengths_are_what_the_datasets_batch(records, tokenizer, order):
    lengths = loader.record_lengths(records, tokenizer, order=order)
    if order is None:
        ds = loader.prompt_dataset(records, tokenizer, batch_size=4, buckets=BUCKETS)
        assert _batched_lengths(ds) == dict(enumerate(lengths.tolist()))
    else:
        orders = (order,) if isinstance(order, str) else order
        ds = loader.sft_dataset(records, tokenizer, batch_size=4, buckets=BUCKETS, order=orders,
                                drop_remainder=False)
        per_copy = _batched_lengths(ds)  # copy k of record i is row k * N + i
        n = len(records)
        assert lengths.tolist() == [max(per_copy[k * n + i] for k in range(len(orders)))
                                    for i in range(n)]


def _long_title_records(records):
    """Three records: a fitting one, one with a long title of words, one whose long title
    has no spaces (a script written without them)."""
    short = dict(records[0], id="short")
    words = dict(records[1], id="words", item_title=" ".join(f"promo{i} hot" for i in range(40)))
    glued = dict(records[2], id="glued", item_title="电视机超薄高清智能网络平板液晶" * 6)
    return [short, words, glued]


def test_fit_records_error_names_the_record_its_length_and_the_fix(records, tokenizer):
    recs = _long_title_records(records)
    lengths = loader.record_lengths(recs, tokenizer)
    limit = int(lengths[0]) + 4
    with pytest.raises(loader.OverlongError,
                       match=rf"^split 'dev', evaluation prompts: 2 record\(s\) too long; first: "
                             rf"record 1 \(id 'words'\) has {lengths[1]} tokens, more than the "
                             rf"{limit} allowed\. Fix: raise it$"):
        loader.fit_records(recs, tokenizer, max_len=limit, overlong="error",
                           what="split 'dev', evaluation prompts", fixes="Fix: raise it")
    with pytest.raises(ValueError, match="overlong"):
        loader.fit_records(recs, tokenizer, max_len=limit, overlong="cut")


def test_fit_records_skip_leaves_out_and_counts(records, tokenizer):
    recs = _long_title_records(records)
    limit = int(loader.record_lengths(recs, tokenizer)[0]) + 4
    result = loader.fit_records(recs, tokenizer, max_len=limit, overlong="skip")
    assert [r["id"] for r in result.records] == ["short"]
    assert result.skipped == ["words", "glued"] and result.truncated == []
    untouched = loader.fit_records(recs, tokenizer, max_len=10_000, overlong="error")
    assert untouched.records == recs and untouched.skipped == untouched.truncated == []


@pytest.mark.parametrize("order", [None, ("answer_first", "think_first")])
def test_fit_records_truncate_cuts_only_the_title(records, tokenizer, order):
    recs = _long_title_records(records)
    one_char = [dict(r, item_title=r["item_title"][0]) for r in recs]
    limit = int(loader.record_lengths(one_char, tokenizer, order=order).max()) + 8
    assert loader.record_lengths(recs[:1], tokenizer, order=order)[0] <= limit
    result = loader.fit_records(recs, tokenizer, max_len=limit, overlong="truncate", order=order)
    assert result.truncated == ["words", "glued"] and result.skipped == []
    assert result.records[0] is recs[0]
    cut_lengths = loader.record_lengths(result.records, tokenizer, order=order)
    assert (cut_lengths <= limit).all()
    for before, after in zip(recs[1:], result.records[1:]):
        assert after["query"] == before["query"] and after["label"] == before["label"]
        assert after["annotations"] == before["annotations"]
        assert before["item_title"].startswith(after["item_title"]) and after["item_title"]
        # The longest prefix: one more character (or word) would not fit.
        longer = dict(after, item_title=before["item_title"][:len(after["item_title"]) + 1])
        if " " in before["item_title"]:
            assert not after["item_title"].endswith(" ")
            next_word = before["item_title"].find(" ", len(after["item_title"]) + 1)
            longer["item_title"] = before["item_title"][:next_word]
        assert loader.record_lengths([longer], tokenizer, order=order)[0] > limit
    # The prompt still carries every marker around the cut title.
    prompt_ids = tokenizer.encode(cot.render_prompt(result.records[1]["query"],
                                                    result.records[1]["item_title"]))
    assert tokenizer.answer_id in prompt_ids


def test_fit_records_truncate_errors_when_no_title_cut_fits(records, tokenizer):
    recs = _long_title_records(records)
    with pytest.raises(loader.OverlongError, match="cutting its item title cannot make it fit"):
        loader.fit_records(recs, tokenizer, max_len=5, overlong="truncate")
