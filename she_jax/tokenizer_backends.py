"""The two text back ends of `she_jax.tokenizer.Tokenizer`: a SentencePiece model (proto
bytes) and a Hugging Face `tokenizers.Tokenizer` (a tokenizer.json). Each does plain-text
encode/decode, piece <-> id lookups and saving its own file; the she_jax text protocol
(special spellings, control tokens, round-trip checks) is the Tokenizer's."""

from __future__ import annotations

import pathlib
from typing import Any

import sentencepiece as spm

SENTENCEPIECE_MODEL_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
KIND_KEY = "she_jax_tokenizer"  # Marker in tokenizer_config.json; HF ignores unknown keys.
SENTENCEPIECE = "sentencepiece"
HUGGINGFACE = "huggingface"


class _SentencePieceBackend:
    """Plain-text encode/decode through a SentencePiece model (serialized proto bytes)."""

    kind = SENTENCEPIECE

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self._processor = spm.SentencePieceProcessor(model_proto=model_proto)

    def __getstate__(self) -> dict[str, Any]:
        # Data loader workers pickle the tokenizer; the proto bytes are the whole state.
        return {"model_proto": self.model_proto}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_proto"])

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    @property
    def special_ids(self) -> frozenset[int]:
        # pad/eos/bos are spm control pieces; control tokens are user-defined (plain) pieces.
        return frozenset(i for i in range(self.vocab_size) if self._processor.is_control(i))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._processor.encode(texts, out_type=int)

    def decode(self, ids: list[int]) -> str:
        return self._processor.decode(ids)

    def piece_id(self, piece: str) -> int | None:
        piece_id = self._processor.piece_to_id(piece)
        return piece_id if self._processor.id_to_piece(piece_id) == piece else None

    def id_to_piece(self, piece_id: int) -> str:
        return self._processor.id_to_piece(piece_id)

    def save(self, out_dir: pathlib.Path) -> None:
        (out_dir / SENTENCEPIECE_MODEL_FILE).write_bytes(self.model_proto)


class _HuggingFaceBackend:
    """Plain-text encode/decode through a `tokenizers.Tokenizer` (a tokenizer.json)."""

    kind = HUGGINGFACE

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        # Ids, not entries: the model needs max id + 1 embedding rows even if ids have gaps.
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(
            i for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special
        )

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def piece_id(self, piece: str) -> int | None:
        return self.tokenizer.token_to_id(piece)

    def id_to_piece(self, piece_id: int) -> str:
        return self.tokenizer.id_to_token(piece_id)

    def save(self, out_dir: pathlib.Path) -> None:
        self.tokenizer.save(str(out_dir / HF_TOKENIZER_FILE))


_Backend = _SentencePieceBackend | _HuggingFaceBackend
