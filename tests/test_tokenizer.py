"""Tests for she_jax.tokenizer: SentencePiece training and local Hugging Face directories."""

import json
import pickle
import random

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from she_jax import special_tokens as st
from she_jax import tokenizer as tok_lib

VOCAB = 512

_SYLLABLES = "ka lo mi ra te su no vi da pe zo ri an el or ux ba ty qu fe".split()
_CATEGORIES = ("running shoes", "phone case", "wireless earbuds", "yoga mat", "coffee maker",
               "winter jacket", "laptop stand", "water bottle", "dress shirt", "gaming mouse")
_BRANDS = ("nike", "adidas", "apple", "xiaomi", "sony", "lululemon", "philips", "anker")
_COLORS = ("red", "blue", "black", "white", "green", "navy", "beige", "pink")


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Varied e-commerce-like strings: titles, prompts, CoT targets, hard queries."""
    rng = random.Random(seed)
    made_up = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
               for _ in range(300)]
    texts = []
    for _ in range(n):
        category, brand, color = rng.choice(_CATEGORIES), rng.choice(_BRANDS), rng.choice(_COLORS)
        number = rng.randint(1, 999)
        noise = " ".join(rng.choice(made_up) for _ in range(rng.randint(1, 5)))
        form = rng.randrange(4)
        if form == 0:
            text = f"{brand.title()} {color} {category} {noise} size {number} 2024 new"
        elif form == 1:
            text = f"{st.QUERY} {color} {category} {st.ITEM} {brand} {category} {noise} {st.ANSWER}"
        elif form == 2:
            label = rng.randrange(4)
            text = (f"{st.STEP_MARKERS[0]} category: {category}; color: {color} "
                    f"{st.STEP_MARKERS[1]} brand: {brand} {st.STEP_MARKERS[4]} "
                    f"label: {st.LABELS[label]} {st.LABEL_TOKENS[label]}")
        else:
            text = f"cheap alternative to {brand} {category}, not {noise}? ${number}.99!"
        texts.append(text)
    return texts


ROUND_TRIP_TEXTS = [
    "",
    "red running shoes",
    "  leading spaces, double  spaces and trailing ",
    "tabs\tand\nnewlines\r\n",
    "Zyxwquv blorptastic 9876543210 (never seen in training)",
    "punctuation: !@#$%^&*()_+-=[]{};':\",./<>?`~\\|",
    "unicode: Ünïcödé 日本語の靴 한국어 🙂👟 ½ ﬁ ＡＢＣ",
    f"{st.QUERY} red shoes {st.ITEM} Nike 42 {st.ANSWER}{st.STEP_MARKERS[0]} x {st.LABEL_TOKENS[2]}"
    "\n",
    f"{st.BOS}text with {st.PAD} and {st.UNK} inside{st.EOS}{st.PAD}{st.PAD}",
    "<|not a token|> <|step9|> <|",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("spm")
    return tok_lib.train_sentencepiece(_corpus(), VOCAB, out_dir), out_dir


# --- SentencePiece ---------------------------------------------------------------------


def test_trained_vocab_is_exact_with_fixed_reserved_ids(trained):
    tokenizer, out_dir = trained
    assert tokenizer.kind == tok_lib.SENTENCEPIECE
    assert tokenizer.vocab_size == VOCAB
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert [tokenizer.token_id(t) for t in (st.PAD, st.EOS, st.BOS, st.UNK)] == [0, 1, 2, 3]
    config = json.loads((out_dir / tok_lib.CONFIG_FILE).read_text())
    assert config[tok_lib.KIND_KEY] == "sentencepiece" and config["vocab_size"] == VOCAB
    assert (out_dir / tok_lib.SENTENCEPIECE_MODEL_FILE).is_file()


def test_control_tokens_are_single_ids_inside_text(trained):
    tokenizer, _ = trained
    control_ids = [tokenizer.token_id(t) for t in st.CONTROL_TOKENS]
    assert len(set(control_ids)) == len(st.CONTROL_TOKENS)
    assert all(tokenizer.encode(t) == [i] for t, i in zip(st.CONTROL_TOKENS, control_ids))
    assert tokenizer.step_marker_ids == tuple(tokenizer.token_id(t) for t in st.STEP_MARKERS)
    assert tokenizer.label_ids == tuple(tokenizer.token_id(t) for t in st.LABEL_TOKENS)
    assert len(tokenizer.step_marker_ids) == 5 and len(tokenizer.label_ids) == 4
    ids = tokenizer.encode(f"{st.QUERY} red shoes {st.ITEM} nike{st.ANSWER}{st.LABEL_TOKENS[1]}")
    assert ids[0] == tokenizer.query_id
    assert ids[-2:] == [tokenizer.answer_id, tokenizer.label_ids[1]]
    assert ids.count(tokenizer.item_id) == 1
    # Reserved ids occur only where a reserved token is written.
    assert not set(tokenizer.encode("red shoes <| item |> <|L5|>")) & set(control_ids)


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_sentencepiece_round_trips_text(trained, text):
    tokenizer, _ = trained
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(np.asarray(ids, np.int32)) == text
    if st.UNK not in text:  # byte fallback: nothing is ever unknown
        assert tokenizer.unk_id not in ids


def test_unseen_characters_fall_back_to_bytes(trained):
    tokenizer, _ = trained
    ids = tokenizer.encode("靴")  # 3 UTF-8 bytes, absent from the corpus
    assert [tokenizer._backend.id_to_piece(i) for i in ids] == ["<0xE9>", "<0x9D>", "<0xB4>"]


def test_reserved_spellings_encode_to_their_ids_and_bos_eos_flags(trained):
    tokenizer, _ = trained
    body = tokenizer.encode("yes")
    assert tokenizer.encode(f"yes{st.EOS}") == body + [tokenizer.eos_id]
    assert tokenizer.encode("yes", add_bos=True, add_eos=True) == [2] + body + [1]
    assert tokenizer.encode(f"{st.PAD}{st.UNK}") == [0, 3]


def test_decode_skips_special_but_keeps_control_unless_asked(trained):
    tokenizer, _ = trained
    text = f"{st.STEP_MARKERS[0]} brand: nike {st.LABEL_TOKENS[0]}"
    ids = tokenizer.encode(text, add_bos=True, add_eos=True) + [tokenizer.pad_id] * 2
    assert tokenizer.decode(ids) == f"{st.BOS}{text}{st.EOS}{st.PAD}{st.PAD}"
    assert tokenizer.decode(ids, skip_special=True) == text
    assert tokenizer.decode(ids, skip_special=True, skip_control=True) == " brand: nike "
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode([VOCAB])
    with pytest.raises(ValueError, match="1-D"):
        tokenizer.decode([[1, 2]])


def test_encode_batch_matches_encode(trained):
    tokenizer, _ = trained
    texts = ROUND_TRIP_TEXTS
    expected = [tokenizer.encode(t, add_eos=True) for t in texts]
    assert tokenizer.encode_batch(texts, add_eos=True) == expected
    with pytest.raises(TypeError, match="one str"):
        tokenizer.encode_batch("red shoes")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tokenizer.encode_batch(["ok", 3])


def test_training_is_deterministic(trained, tmp_path):
    tokenizer, out_dir = trained
    again = tok_lib.train_sentencepiece(iter(_corpus()), VOCAB, tmp_path)  # any iterable
    assert (tmp_path / "tokenizer.model").read_bytes() == (out_dir / "tokenizer.model").read_bytes()
    assert again.encode_batch(ROUND_TRIP_TEXTS) == tokenizer.encode_batch(ROUND_TRIP_TEXTS)


def test_training_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="vocab_size >= 273"):
        tok_lib.train_sentencepiece(_corpus(), 272, tmp_path)
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        tok_lib.train_sentencepiece(["red shoes", "blue shoes"], 4096, tmp_path)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        tok_lib.train_sentencepiece(["red shoes", 7], VOCAB, tmp_path)


def test_pad_left_and_right(trained):
    tokenizer, _ = trained
    seqs = [[7, 8, 9], [5], []]
    ids, mask = tokenizer.pad(seqs, side="left")
    np.testing.assert_array_equal(ids, [[7, 8, 9], [0, 0, 5], [0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1], [0, 0, 0]])
    assert ids.dtype == np.int32 and mask.dtype == bool
    ids, mask = tokenizer.pad(seqs, length=4, side="right")
    np.testing.assert_array_equal(ids, [[7, 8, 9, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="sequence 0 has 3 tokens, more than length=2"):
        tokenizer.pad(seqs, length=2)
    with pytest.raises(ValueError, match="side"):
        tokenizer.pad(seqs, side="middle")


def test_check_model_vocab_requires_exact_match(trained):
    tokenizer, _ = trained
    tokenizer.check_model_vocab(VOCAB)
    for wrong in (VOCAB - 1, VOCAB + 1):
        with pytest.raises(ValueError, match=f"must be equal.*vocab_size={wrong}"):
            tokenizer.check_model_vocab(wrong)


def test_save_load_and_pickle_round_trip(trained, tmp_path):
    tokenizer, out_dir = trained
    for restored in (tok_lib.load_tokenizer(out_dir), pickle.loads(pickle.dumps(tokenizer))):
        assert restored.encode_batch(ROUND_TRIP_TEXTS) == tokenizer.encode_batch(ROUND_TRIP_TEXTS)
        assert restored.label_ids == tokenizer.label_ids and restored.vocab_size == VOCAB
    tokenizer.save(tmp_path / "copy")
    assert (tok_lib.load_tokenizer(tmp_path / "copy").encode(ROUND_TRIP_TEXTS[7])
            == tokenizer.encode(ROUND_TRIP_TEXTS[7]))


def test_load_errors_name_the_path_and_what_was_expected(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no tokenizer found.*tokenizer.json"):
        tok_lib.load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        tok_lib.load_tokenizer(tmp_path / "missing")
    _, out_dir = trained
    config = json.loads((out_dir / tok_lib.CONFIG_FILE).read_text())
    (tmp_path / tok_lib.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="tokenizer.model is missing"):
        tok_lib.load_tokenizer(tmp_path)
    (tmp_path / tok_lib.CONFIG_FILE).write_text("{\n  oops")
    with pytest.raises(ValueError, match="invalid JSON at line 2"):
        tok_lib.load_tokenizer(tmp_path)


# --- Hugging Face ----------------------------------------------------------------------

_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _write_qwen2_dir(directory, pad_token="<|endoftext|>", extra_specials=()):
    """A Qwen2-layout folder: byte-level BPE tokenizer.json + tokenizer_config + config."""
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    specials = _QWEN_SPECIALS + list(extra_specials)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(_corpus(), trainer)
    directory.mkdir(parents=True, exist_ok=True)
    hf.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": pad_token, "unk_token": None, "model_max_length": 32768}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "config.json").write_text(json.dumps(
        {"model_type": "qwen2", "vocab_size": 512, "eos_token_id": hf.token_to_id("<|im_end|>")}))
    return hf


def _write_llama_dir(directory, legacy):
    """A Llama-layout folder: BPE with byte fallback, <s>/</s>/<unk>, no pad.

    legacy: Llama-2's original tokenizer.json (Prepend('▁') normalizer, Strip decoder), else
    the Metaspace(prepend_scheme='first') form newer conversions write.
    """
    hf = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    if legacy:
        hf.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                        decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    else:
        hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
        hf.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme="first", split=False),
                                        decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    hf.train_from_iterator(_corpus(), trainer)
    # Byte pieces are ordinary vocabulary entries in Llama's model, appended here.
    spec = json.loads(hf.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True},
              "unk_token": "<unk>", "pad_token": None}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen2")
    base = _write_qwen2_dir(directory)
    return directory, base.get_vocab_size(with_added_tokens=True)


def test_hf_qwen2_dir_loads_with_control_tokens_added(qwen_dir):
    directory, base_size = qwen_dir
    tokenizer = tok_lib.load_tokenizer(directory)
    assert tokenizer.kind == tok_lib.HUGGINGFACE and base_size > 256
    assert tokenizer.added_tokens == st.CONTROL_TOKENS
    assert tokenizer.vocab_size == base_size + len(st.CONTROL_TOKENS)
    control_ids = [tokenizer.token_id(t) for t in st.CONTROL_TOKENS]
    assert sorted(control_ids) == list(range(base_size, tokenizer.vocab_size))
    assert all(tokenizer.encode(t) == [i] for t, i in zip(st.CONTROL_TOKENS, control_ids))
    assert tokenizer.eos_id == tokenizer.token_id("<|im_end|>")
    assert tokenizer.pad_id == tokenizer.token_id("<|endoftext|>")
    assert tokenizer.bos_id is None and tokenizer.unk_id is None
    with pytest.raises(ValueError, match="no BOS"):
        tokenizer.encode("x", add_bos=True)


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_hf_qwen2_round_trips_text(qwen_dir, text):
    tokenizer = tok_lib.load_tokenizer(qwen_dir[0])
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_hf_reserved_spellings_and_native_specials(qwen_dir):
    tokenizer = tok_lib.load_tokenizer(qwen_dir[0])
    im_start = tokenizer.token_id("<|im_start|>")
    text = f"<|im_start|>{st.STEP_MARKERS[0]} brand: nike {st.LABEL_TOKENS[3]}{st.EOS}"
    ids = tokenizer.encode(text)
    assert ids[:2] == [im_start, tokenizer.step_marker_ids[0]]
    assert ids[-2:] == [tokenizer.label_ids[3], tokenizer.eos_id]
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special=True) == text[len("<|im_start|>"):-len(st.EOS)]
    # The tokenizer's own EOS spelling is an alias that decodes to the she_jax spelling.
    assert tokenizer.encode("<|im_end|>") == [tokenizer.eos_id]
    assert tokenizer.decode([tokenizer.eos_id]) == st.EOS


def test_hf_pad_defaults_to_eos(tmp_path):
    _write_qwen2_dir(tmp_path, pad_token=None)
    tokenizer = tok_lib.load_tokenizer(tmp_path)
    assert tokenizer.pad_id == tokenizer.eos_id
    ids, mask = tokenizer.pad([[5], [5, 6]])
    np.testing.assert_array_equal(ids, [[tokenizer.eos_id, 5], [5, 6]])
    assert tokenizer.decode(tokenizer.encode(f"ok{st.PAD}"), skip_special=True) == "ok"


def test_hf_control_token_already_present_keeps_its_id(tmp_path):
    base = _write_qwen2_dir(tmp_path, extra_specials=[st.QUERY])
    tokenizer = tok_lib.load_tokenizer(tmp_path)
    assert tokenizer.query_id == base.token_to_id(st.QUERY)
    assert tokenizer.added_tokens == st.CONTROL_TOKENS[1:]
    assert tokenizer.vocab_size == base.get_vocab_size() + len(st.CONTROL_TOKENS) - 1


def test_hf_check_model_vocab_counts_added_tokens(qwen_dir):
    directory, base_size = qwen_dir
    tokenizer = tok_lib.load_tokenizer(directory)
    tokenizer.check_model_vocab(tokenizer.vocab_size)
    tokenizer.check_model_vocab(tokenizer.vocab_size + 64)  # padded embeddings are fine
    expected = f"up to {tokenizer.vocab_size - 1}.*{len(st.CONTROL_TOKENS)} of them control"
    with pytest.raises(ValueError, match=expected):
        tokenizer.check_model_vocab(base_size)


def test_hf_save_load_round_trip(qwen_dir, tmp_path):
    tokenizer = tok_lib.load_tokenizer(qwen_dir[0])
    tokenizer.save(tmp_path)
    restored = tok_lib.load_tokenizer(tmp_path)
    assert restored.added_tokens == tokenizer.added_tokens
    assert (restored.eos_id, restored.pad_id, restored.vocab_size) == (
        tokenizer.eos_id, tokenizer.pad_id, tokenizer.vocab_size)
    assert restored.encode_batch(ROUND_TRIP_TEXTS) == tokenizer.encode_batch(ROUND_TRIP_TEXTS)
    assert pickle.loads(pickle.dumps(tokenizer)).encode(ROUND_TRIP_TEXTS[6]) == tokenizer.encode(
        ROUND_TRIP_TEXTS[6])


# Without a pad token, pad is eos and decodes spelled as eos, so no PAD in these texts.
@pytest.mark.parametrize("text", [t for t in ROUND_TRIP_TEXTS if st.PAD not in t])
@pytest.mark.parametrize("legacy", [True, False])
def test_hf_llama_layouts_round_trip_text(tmp_path_factory, legacy, text):
    directory = tmp_path_factory.getbasetemp() / f"llama_legacy_{legacy}"
    if not directory.exists():
        _write_llama_dir(directory, legacy)
    tokenizer = tok_lib.load_tokenizer(directory)
    assert tokenizer.bos_id == tokenizer.token_id("<s>") and tokenizer.pad_id == tokenizer.eos_id
    if not legacy and text.startswith(" "):
        # Metaspace 'first' prepends '▁' only when the text lacks one, so " x" and "x" encode
        # alike (in transformers too); the leading space is the one thing such a layout loses.
        text = text.lstrip(" ")
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("hi", add_bos=True)[0] == tokenizer.bos_id


def test_hf_lossy_or_empty_tokenizers_are_rejected(tmp_path):
    vocab = {"<unk>": 0, "red": 1, "</s>": 2}
    lossy = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    lossy.normalizer = normalizers.Lowercase()
    lossy.pre_tokenizer = pre_tokenizers.Whitespace()
    lossy.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match="does not round-trip"):
        tok_lib.load_tokenizer(tmp_path)
    empty = tokenizers.Tokenizer(models.WordLevel({}, unk_token="<unk>"))
    empty.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="vocabulary is empty"):
        tok_lib.load_tokenizer(tmp_path)


def test_hf_missing_eos_is_a_clear_error(qwen_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((qwen_dir[0] / "tokenizer.json").read_bytes())
    with pytest.raises(ValueError, match="no EOS token"):
        tok_lib.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(ValueError, match="eos_token='<|nope|>' is not in"):
        tok_lib.load_tokenizer(tmp_path)
