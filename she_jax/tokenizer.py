"""One tokenizer interface over a SentencePiece model trained here or a local HF tokenizer.

The default is a byte-fallback BPE SentencePiece model trained on the corpus in about a
second (`train_sentencepiece`); its vocabulary is exactly the model's `vocab_size`, with
pad=0, eos=1, bos=2, unk=3 and every she_jax control token (special_tokens.CONTROL_TOKENS)
one id each. A local Hugging Face tokenizer directory (tokenizer.json, e.g. a Qwen2/Qwen3/
Llama checkpoint folder) is read with the `tokenizers` library directly -- transformers 5's
slow/auto classes can silently produce an empty vocabulary -- and the control tokens are
added to it as special tokens where absent.

Text protocol shared by both kinds: the she_jax spellings PAD/EOS/BOS/UNK ('<|eos|>' ...)
in text encode to the tokenizer's pad/eos/bos/unk ids and decode back to those spellings,
and control tokens ('<|step1|>', '<|L4|>', ...) in text encode to their single id, so
`decode(encode(text)) == text` (checked on a probe whenever a Tokenizer is built). Known
exceptions: SentencePiece decodes a literal '▁' (U+2581) as a space; an HF Metaspace
(prepend_scheme='first') layout drops a space that starts the text; where pad == eos the
pad spelling decodes as '<|eos|>'.

Files: a SentencePiece tokenizer directory holds `tokenizer.model` and a
`tokenizer_config.json` with {"she_jax_tokenizer": "sentencepiece"}; `load_tokenizer`
dispatches on that marker, else on `tokenizer.json` (Hugging Face). `save_for_transformers`
also writes the files with which transformers' AutoTokenizer opens an exported model
directory and encodes exactly as she_jax does.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np
import sentencepiece as spm
import tokenizers

from she_jax import special_tokens
from she_jax.tokenizer_backends import (  # noqa: F401  (re-exported)
    CONFIG_FILE, HF_TOKENIZER_FILE, HUGGINGFACE, KIND_KEY, SENTENCEPIECE,
    SENTENCEPIECE_MODEL_FILE, _Backend, _HuggingFaceBackend, _SentencePieceBackend)

# Written by save_for_transformers: a module whose class loads tokenizer.json as written.
TRANSFORMERS_MODULE_FILE = "tokenization_she_jax.py"
_TRANSFORMERS_MODULE = '''"""Written by she_jax: loads this directory's tokenizer.json exactly as written."""

from transformers import PreTrainedTokenizerFast


class SheJaxTokenizer(PreTrainedTokenizerFast):
    """tokenizer.json as she_jax wrote it (no model-specific rebuild of its pipeline)."""
'''

# SentencePiece byte_fallback reserves one piece per byte value.
_NUM_BYTE_PIECES = 256
MIN_SENTENCEPIECE_VOCAB = len(special_tokens.ALL_SPECIAL) + _NUM_BYTE_PIECES + 1
# spm splits its input across this many threads and the learned merges depend on the
# split, so it is fixed (not the machine's core count) to make training reproducible.
_SENTENCEPIECE_TRAIN_THREADS = 4
# Built tokenizers must round-trip this (control tokens, case, digits, punctuation, non-ASCII).
_ROUND_TRIP_PROBE = (
    f"{special_tokens.QUERY} Red running shoes, size 42 (men's) {special_tokens.ITEM} "
    f"Nike Air-Zoom 2024 café {special_tokens.ANSWER}{special_tokens.STEP_MARKERS[0]} "
    f"brand: nike {special_tokens.LABEL_TOKENS[0]}{special_tokens.EOS}"
)
# save_for_transformers checks the exported tokenizer.json against these. No she_jax
# pad/eos/bos/unk spellings: an HF vocabulary has its own (Qwen's '<|endoftext|>').
_EXPORT_PROBES = (
    _ROUND_TRIP_PROBE.removesuffix(special_tokens.EOS),
    "  two  spaces,\ttabs\nand newlines; ümlaut 日本語 🙂 $19.99 (men's) {}[] <|not a token|>",
)



class Tokenizer:
    """Encode/decode/pad with the she_jax reserved tokens resolved to ids.

    Build with `train_sentencepiece` or `load_tokenizer`. Attributes:
      kind: 'sentencepiece' | 'huggingface'.
      vocab_size: max id + 1 (the embedding rows a model needs).
      pad_id, eos_id: always set (an HF tokenizer without pad pads with eos).
      bos_id, unk_id: None where the tokenizer has none (e.g. Qwen2's byte-level BPE).
      query_id, item_id, answer_id, step_marker_ids (5, order of STEP_MARKERS),
      label_ids (4, order of LABELS: label_ids[c] is the token of class c).
      added_tokens: control tokens she_jax appended to an HF vocabulary (ids the checkpoint's
        embedding may lack); empty for SentencePiece.
    """

    def __init__(
        self,
        backend: _Backend,
        *,
        pad_id: int,
        eos_id: int,
        bos_id: int | None,
        unk_id: int | None,
        added_tokens: Sequence[str] = (),
        source: str = "<memory>",
    ):
        self._backend = backend
        self.kind = backend.kind
        self.vocab_size = backend.vocab_size
        self.pad_id, self.eos_id, self.bos_id, self.unk_id = pad_id, eos_id, bos_id, unk_id
        self.added_tokens = tuple(added_tokens)
        control_ids = {t: self._backend_single_id(t, source) for t in special_tokens.CONTROL_TOKENS}
        self.query_id = control_ids[special_tokens.QUERY]
        self.item_id = control_ids[special_tokens.ITEM]
        self.answer_id = control_ids[special_tokens.ANSWER]
        self.step_marker_ids = tuple(control_ids[t] for t in special_tokens.STEP_MARKERS)
        self.label_ids = tuple(control_ids[t] for t in special_tokens.LABEL_TOKENS)
        self._control_ids = frozenset(control_ids.values())
        # The she_jax spellings of pad/eos/bos/unk are aliases of the tokenizer's own ids. eos
        # wins when ids coincide (HF pad defaults to eos), so decoding shows the eos spelling.
        spelled_meta_ids = [
            (special_tokens.EOS, eos_id),
            (special_tokens.BOS, bos_id),
            (special_tokens.PAD, pad_id),
            (special_tokens.UNK, unk_id),
        ]
        meta_ids = [(text, i) for text, i in spelled_meta_ids if i is not None]
        self._meta_ids = frozenset(i for _, i in meta_ids)
        self._reserved_id_by_text = dict(control_ids) | dict(meta_ids)
        self._reserved_text_by_id = {i: t for t, i in control_ids.items()}
        for text, token_id in meta_ids:
            self._reserved_text_by_id.setdefault(token_id, text)
        # The backend matches control tokens itself (spm user-defined symbols, HF added
        # tokens); the she_jax meta spellings are cut out of the text here.
        self._meta_pattern = re.compile("(" + "|".join(re.escape(t) for t, _ in meta_ids) + ")")
        # pad/eos/bos and native special tokens that are not she_jax's (Qwen's '<|im_start|>').
        self._skip_special_ids = (backend.special_ids - self._reserved_text_by_id.keys()) | (
            {pad_id, eos_id} | ({bos_id} - {None})
        )
        # HF decoders differ in how text next to added tokens decodes: Metaspace
        # (prepend_scheme='first') needs it decoded in context, while Llama-2's legacy
        # Prepend('▁') normalizer puts a '▁' on every piece between added tokens, which only
        # decoding each piece alone strips. Use the first way that round-trips.
        for self._decode_cuts_at_control in (False, True):
            round_trip = self.decode(self.encode(_ROUND_TRIP_PROBE))
            if round_trip == _ROUND_TRIP_PROBE:
                break
        else:
            raise ValueError(
                f"tokenizer from {source} does not round-trip text: {_ROUND_TRIP_PROBE!r} decodes "
                f"back as {round_trip!r}; she_jax needs a lossless tokenizer (byte-level or "
                "byte-fallback BPE, no lowercasing/normalization)"
            )

    def __repr__(self) -> str:
        return (
            f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
            f"eos_id={self.eos_id}, bos_id={self.bos_id}, added_tokens={len(self.added_tokens)})"
        )

    def _backend_single_id(self, token: str, source: str) -> int:
        ids = self._backend.encode_batch([token])[0]
        if len(ids) != 1:
            raise ValueError(f"tokenizer from {source}: {token!r} encodes to {ids}, not one id")
        return ids[0]

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """text -> ids; reserved tokens in the text become their single ids."""
        return self.encode_batch([text], add_bos=add_bos, add_eos=add_eos)[0]

    def encode_batch(
        self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """Encodes many texts in one backend call (spm and tokenizers both batch natively)."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a sequence of strings, got one str; use encode()")
        if add_bos and self.bos_id is None:
            raise ValueError(f"add_bos=True but this {self.kind} tokenizer has no BOS token")
        # re.split with one capture group alternates [plain, meta, plain, ..., plain].
        parts_per_text = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] is {type(text).__name__}, not str")
            parts_per_text.append(self._meta_pattern.split(text))
        plain_segments = [p for parts in parts_per_text for p in parts[0::2] if p]
        encoded_segments = iter(self._backend.encode_batch(plain_segments))
        batch = []
        for parts in parts_per_text:
            ids = [self.bos_id] if add_bos else []
            for position, part in enumerate(parts):
                if position % 2:
                    ids.append(self._reserved_id_by_text[part])
                elif part:
                    ids.extend(next(encoded_segments))
            if add_eos:
                ids.append(self.eos_id)
            batch.append(ids)
        return batch

    def decode(
        self,
        ids: Sequence[int] | np.ndarray,
        skip_special: bool = False,
        skip_control: bool = False,
    ) -> str:
        """ids: [T] -> text.

        skip_special drops pad/eos/bos (and an HF tokenizer's own other special tokens);
        control tokens (steps, labels, query/item/answer) stay unless skip_control.
        """
        flat = np.asarray(ids)
        if flat.ndim != 1:
            raise ValueError(f"decode takes a 1-D id sequence, got shape {flat.shape}")
        if flat.size and (flat.min() < 0 or flat.max() >= self.vocab_size):
            raise ValueError(
                f"ids out of range [0, {self.vocab_size}): min {flat.min()}, max {flat.max()}"
            )
        pieces: list[str] = []
        run: list[int] = []
        for token_id in flat.tolist():
            if (skip_special and token_id in self._skip_special_ids) or (
                skip_control and token_id in self._control_ids
            ):
                continue
            cut = token_id in self._meta_ids or (
                self._decode_cuts_at_control and token_id in self._control_ids
            )
            if cut:
                # Written as the she_jax spelling (spm decodes pad/eos/bos to '', HF to its own).
                if run:
                    pieces.append(self._backend.decode(run))
                    run = []
                pieces.append(self._reserved_text_by_id[token_id])
            else:
                run.append(token_id)
        if run:
            pieces.append(self._backend.decode(run))
        return "".join(pieces)

    def pad(
        self, seqs: Sequence[Sequence[int]], length: int | None = None, side: str = "left"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pads id sequences with pad_id.

        Returns ids: [B, T] int32 and mask: [B, T] bool (True on real tokens), T = length or
        the longest sequence. Left padding is what prefill/sampling expect.
        """
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        lengths = [len(seq) for seq in seqs]
        target = max(lengths, default=0) if length is None else length
        ids = np.full((len(seqs), target), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(seqs), target), dtype=bool)
        for row, (seq, seq_length) in enumerate(zip(seqs, lengths)):
            if seq_length > target:
                raise ValueError(
                    f"sequence {row} has {seq_length} tokens, more than length={target}"
                )
            start = 0 if side == "right" else target - seq_length
            ids[row, start : start + seq_length] = seq
            mask[row, start : start + seq_length] = True
        return ids, mask

    def token_id(self, piece: str) -> int:
        """The id of one vocabulary piece (she_jax pad/eos/bos/unk spellings included)."""
        if piece in self._reserved_id_by_text:
            return self._reserved_id_by_text[piece]
        piece_id = self._backend.piece_id(piece)
        if piece_id is None:
            raise KeyError(f"{piece!r} is not a piece of this {self.kind} tokenizer's vocabulary")
        return piece_id

    def check_model_vocab(self, model_vocab_size: int) -> None:
        """Raises ValueError if a model with this vocab_size cannot embed every token id."""
        if self.kind == SENTENCEPIECE and model_vocab_size != self.vocab_size:
            raise ValueError(
                f"model vocab_size={model_vocab_size} but the she_jax SentencePiece tokenizer has "
                f"{self.vocab_size} pieces; they must be equal: set the model's vocab_size to "
                f"{self.vocab_size} or retrain the tokenizer with vocab_size={model_vocab_size}"
            )
        if self.vocab_size > model_vocab_size:
            added = (
                f" ({len(self.added_tokens)} of them control tokens she_jax added: "
                f"{', '.join(self.added_tokens)}; resize the checkpoint's embedding to at least "
                f"{self.vocab_size})"
                if self.added_tokens
                else ""
            )
            raise ValueError(
                f"tokenizer ids go up to {self.vocab_size - 1} but the model embeds only "
                f"{model_vocab_size} ids{added}"
            )

    def save(self, out_dir: str | os.PathLike[str]) -> None:
        """Writes a directory that `load_tokenizer` reads back to identical encodings."""
        out_path = pathlib.Path(out_dir)
        out_path.mkdir(parents=True, exist_ok=True)
        self._backend.save(out_path)
        config: dict[str, Any] = {KIND_KEY: self.kind, "vocab_size": self.vocab_size}
        for key, token_id in (
            ("pad_token", self.pad_id),
            ("eos_token", self.eos_id),
            ("bos_token", self.bos_id),
            ("unk_token", self.unk_id),
        ):
            config[key] = None if token_id is None else self._backend.id_to_piece(token_id)
        if self.kind == HUGGINGFACE:
            # Lets transformers' AutoTokenizer open the directory too.
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            config["she_jax_added_tokens"] = list(self.added_tokens)
        (out_path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def save_for_transformers(self, out_dir: str | os.PathLike[str]) -> None:
        """Writes the tokenizer into a Hugging Face model directory (one `models.hf.save_hf`
        wrote), so that `transformers.AutoTokenizer.from_pretrained(out_dir)` encodes and
        decodes exactly as this tokenizer does, and `load_tokenizer(out_dir)` reads it back.

        Besides `save`'s files: tokenizer.json (for SentencePiece, transformers' own
        conversion of tokenizer.model, checked here to encode the probe texts to the same
        ids), HF keys in tokenizer_config.json (no BOS/EOS added, no space clean-up), and
        tokenization_she_jax.py. Why the module: for a qwen2 config.json, transformers 5
        ignores `tokenizer_class` and rebuilds a byte-level Qwen2Tokenizer from the vocabulary
        (it would drop every space of a SentencePiece vocabulary); an `auto_map` entry is
        the one thing that skips that rebuild, and the module it names (a plain
        PreTrainedTokenizerFast) makes the directory load with trust_remote_code=True too.
        """
        out_path = pathlib.Path(out_dir)
        self.save(out_path)
        hf_file = out_path / HF_TOKENIZER_FILE
        if self.kind == SENTENCEPIECE:
            import transformers  # only exports need it (a slow import)

            with tempfile.TemporaryDirectory() as plain:  # tokenizer files only, no config.json
                self.save(plain)
                converted = transformers.PreTrainedTokenizerFast.from_pretrained(plain)
            converted.backend_tokenizer.save(str(hf_file))
        hf_tokenizer = tokenizers.Tokenizer.from_file(str(hf_file))
        for text in _EXPORT_PROBES:
            hf_ids = hf_tokenizer.encode(text, add_special_tokens=False).ids
            if hf_ids != self.encode(text):
                raise ValueError(f"{hf_file}: the Hugging Face form of this {self.kind} "
                                 f"tokenizer encodes {text!r} as {hf_ids}, she_jax as "
                                 f"{self.encode(text)}")
        config = _read_json(out_path / CONFIG_FILE)
        config.update({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "auto_map": {"AutoTokenizer": [None, TRANSFORMERS_MODULE_FILE.removesuffix(".py")
                                           + ".SheJaxTokenizer"]},
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        })
        (out_path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (out_path / TRANSFORMERS_MODULE_FILE).write_text(_TRANSFORMERS_MODULE)


def train_sentencepiece(
    texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike[str]
) -> Tokenizer:
    """Trains a byte-fallback BPE SentencePiece tokenizer of exactly vocab_size pieces.

    Deterministic for the same texts in the same order; ~1 s for 50k short strings at
    vocab 4096. Writes tokenizer.model and tokenizer_config.json into out_dir.
    BPE rather than unigram: unigram's seed vocabulary stops short of the requested size on
    small synthetic corpora, and BPE is what the HF families she_jax loads use.
    """
    if vocab_size < MIN_SENTENCEPIECE_VOCAB:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: {len(special_tokens.ALL_SPECIAL)} reserved "
            f"tokens + {_NUM_BYTE_PIECES} byte pieces need vocab_size >= {MIN_SENTENCEPIECE_VOCAB}"
        )
    # Materialized so a bad element raises here; spm would wrap it in an opaque RuntimeError.
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, not str")
    model_writer = io.BytesIO()
    spm.set_random_generator_seed(0)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model_writer,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=True,
            byte_fallback=True,
            # Characters rarer than this share of the corpus are left to byte pieces rather
            # than each taking a vocabulary slot.
            character_coverage=0.9995,
            pad_id=0,
            eos_id=1,
            bos_id=2,
            unk_id=3,
            pad_piece=special_tokens.PAD,
            eos_piece=special_tokens.EOS,
            bos_piece=special_tokens.BOS,
            unk_piece=special_tokens.UNK,
            user_defined_symbols=list(special_tokens.CONTROL_TOKENS),
            # Lossless: no NFKC, no whitespace collapsing, no implicit leading space, so
            # decode(encode(x)) == x and encoding concatenates across special-token splits.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=1 << 16,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=_SENTENCEPIECE_TRAIN_THREADS,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise ValueError(
            f"SentencePiece training on {len(texts)} texts with vocab_size={vocab_size} "
            f"failed: {error}"
        ) from error
    backend = _SentencePieceBackend(model_writer.getvalue())
    if backend.vocab_size != vocab_size:
        raise ValueError(f"SentencePiece produced {backend.vocab_size} pieces, not {vocab_size}")
    tokenizer = _sentencepiece_tokenizer(backend, source="train_sentencepiece")
    tokenizer.save(out_dir)
    return tokenizer


def _sentencepiece_tokenizer(backend: _SentencePieceBackend, source: str) -> Tokenizer:
    ids = {t: backend.piece_id(t) for t in special_tokens.ALL_SPECIAL}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"{source}: SentencePiece model lacks reserved pieces {missing}")
    return Tokenizer(
        backend,
        pad_id=ids[special_tokens.PAD],
        eos_id=ids[special_tokens.EOS],
        bos_id=ids[special_tokens.BOS],
        unk_id=ids[special_tokens.UNK],
        source=source,
    )


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(content).__name__}")
    return content


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json spells a token as a string or an AddedToken dict {"content": ...}.
    if isinstance(value, dict):
        return value.get("content")
    return value


def _config_token_id(
    tokenizer: tokenizers.Tokenizer, config: dict[str, Any], key: str, path: pathlib.Path
) -> int | None:
    text = _token_text(config.get(key))
    if text is None:
        return None
    token_id = tokenizer.token_to_id(text)
    if token_id is None:
        raise ValueError(f"{path}: {key}={text!r} is not in the tokenizer.json vocabulary")
    return token_id


def _model_config_eos_id(directory: pathlib.Path) -> int | None:
    for name in ("generation_config.json", "config.json"):
        path = directory / name
        if path.is_file():
            eos = _read_json(path).get("eos_token_id")
            if isinstance(eos, list):
                eos = eos[0] if eos else None
            if eos is not None:
                return int(eos)
    return None


def _load_huggingface(directory: pathlib.Path) -> Tokenizer:
    tokenizer_file = directory / HF_TOKENIZER_FILE
    try:
        hf_tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    except Exception as error:
        raise ValueError(
            f"{tokenizer_file}: cannot be read by the tokenizers library: {error}"
        ) from error
    if hf_tokenizer.get_vocab_size(with_added_tokens=False) == 0:
        raise ValueError(f"{tokenizer_file}: the tokenizer's vocabulary is empty")
    # Some tokenizer.json files ship with padding/truncation on; batches are padded by pad().
    hf_tokenizer.no_padding()
    hf_tokenizer.no_truncation()
    config_path = directory / CONFIG_FILE
    config = _read_json(config_path) if config_path.is_file() else {}

    eos_id = _config_token_id(hf_tokenizer, config, "eos_token", config_path)
    if eos_id is None:
        eos_id = _model_config_eos_id(directory)
    if eos_id is None:
        raise ValueError(
            f"{directory}: no EOS token: expected eos_token in {CONFIG_FILE} or eos_token_id in "
            "config.json / generation_config.json"
        )
    pad_id = _config_token_id(hf_tokenizer, config, "pad_token", config_path)
    bos_id = _config_token_id(hf_tokenizer, config, "bos_token", config_path)
    unk_id = _config_token_id(hf_tokenizer, config, "unk_token", config_path)

    added_tokens = list(config.get("she_jax_added_tokens", []))
    for token in special_tokens.CONTROL_TOKENS:
        existing_id = hf_tokenizer.token_to_id(token)
        if hf_tokenizer.encode(token, add_special_tokens=False).ids != [existing_id]:
            if existing_id is None and token not in added_tokens:
                added_tokens.append(token)
            # An existing vocabulary entry keeps its id; it only becomes matchable as one token.
            hf_tokenizer.add_special_tokens(
                [tokenizers.AddedToken(token, special=True, normalized=False)]
            )
    return Tokenizer(
        _HuggingFaceBackend(hf_tokenizer),
        pad_id=eos_id if pad_id is None else pad_id,
        eos_id=eos_id,
        bos_id=bos_id,
        unk_id=unk_id,
        added_tokens=added_tokens,
        source=str(directory),
    )


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Loads a she_jax SentencePiece directory or a local Hugging Face tokenizer directory."""
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory; expected a tokenizer directory")
    config_path = directory / CONFIG_FILE
    config = _read_json(config_path) if config_path.is_file() else {}
    if config.get(KIND_KEY) == SENTENCEPIECE:
        model_path = directory / SENTENCEPIECE_MODEL_FILE
        if not model_path.is_file():
            raise FileNotFoundError(
                f"{config_path} names a SentencePiece tokenizer but {model_path} is missing"
            )
        backend = _SentencePieceBackend(model_path.read_bytes())
        if config.get("vocab_size", backend.vocab_size) != backend.vocab_size:
            raise ValueError(
                f"{config_path}: vocab_size={config['vocab_size']} but {model_path} has "
                f"{backend.vocab_size} pieces"
            )
        return _sentencepiece_tokenizer(backend, source=str(directory))
    if (directory / HF_TOKENIZER_FILE).is_file():
        return _load_huggingface(directory)
    raise FileNotFoundError(
        f"{directory}: no tokenizer found; expected either {SENTENCEPIECE_MODEL_FILE} + "
        f'{CONFIG_FILE} with {{"{KIND_KEY}": "{SENTENCEPIECE}"}} (from train_sentencepiece) or '
        f"a Hugging Face {HF_TOKENIZER_FILE} (a slow-only HF folder with just "
        f"{SENTENCEPIECE_MODEL_FILE} must first be converted, e.g. by saving it with "
        "transformers' PreTrainedTokenizerFast)"
    )
