"""Captions to token ids: a thin wrapper over a `tokenizers.Tokenizer`.

Either a WordPiece trained on the training captions, or a local Hugging Face tokenizer
directory (`tokenizer.json`, or a BERT-style `vocab.txt`). Sequences carry no [CLS] (the tower
adds its own), end with [SEP] and are right-padded: the layout `Batch.text_ids` documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from .wordpiece import PREFIX, count_words, learn_vocab

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Bump when `TextTokenizer.train` learns a different vocabulary from the same texts: it names the
# cache directory of trained tokenizers (2: deterministic `wordpiece` vocabularies, not HF's trainer).
TRAINER_VERSION = 2
# Role -> spellings in BERT-style and RoBERTa-style vocabularies.
_ROLE_TOKENS = {
    "pad": ("[PAD]", "<pad>"),
    "sep": ("[SEP]", "</s>"),
    "cls": ("[CLS]", "<s>"),
    "unk": ("[UNK]", "<unk>"),
    "mask": ("[MASK]", "<mask>"),
}
_REQUIRED_ROLES = ("pad", "sep", "mask")


class TextTokenizer:
    """Encodes captions into fixed-length id/mask tensors and knows which ids are special."""

    def __init__(self, tokenizer: Tokenizer, directory: Path | None = None) -> None:
        tokenizer.no_truncation()  # a loaded tokenizer.json may carry its own; `encode` does both itself
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.directory = directory
        roles = {role: _find_token(tokenizer, spellings) for role, spellings in _ROLE_TOKENS.items()}
        missing = [role for role in _REQUIRED_ROLES if roles[role] is None]
        if missing:
            wanted = "; ".join(f"{role}: {' or '.join(_ROLE_TOKENS[role])}" for role in missing)
            raise ValueError(f"the tokenizer lacks special tokens ({wanted})")
        found = {role: token_id for role, token_id in roles.items() if token_id is not None}
        self.pad_id: int = found["pad"]
        self.sep_id: int = found["sep"]
        self.mask_id: int = found["mask"]
        self.cls_id: int | None = found.get("cls")
        self.unk_id: int | None = found.get("unk")
        declared = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
        role_ids = set(found.values())
        self.special_ids = torch.tensor(sorted(declared | role_ids), dtype=torch.int64)
        self.vocab_size: int = max(tokenizer.get_vocab_size(with_added_tokens=True), int(self.special_ids.max()) + 1)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> TextTokenizer:
        """A lowercasing WordPiece (BERT normaliser and pre-tokeniser) learnt from `texts`.

        Deterministic: the same texts and size give the same `tokenizer.json`, byte for byte, in
        any process (the `wordpiece` module says why Hugging Face's trainer is not used).
        """
        normalizer = normalizers.BertNormalizer(lowercase=True)
        pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        vocab = learn_vocab(count_words(texts, normalizer, pre_tokenizer), vocab_size, _SPECIAL_TOKENS)
        tokenizer = Tokenizer(WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix=PREFIX))
        tokenizer.normalizer = normalizer
        tokenizer.pre_tokenizer = pre_tokenizer
        tokenizer.decoder = decoders.WordPiece(prefix=PREFIX)
        tokenizer.add_special_tokens(list(_SPECIAL_TOKENS))
        return cls(tokenizer)

    @classmethod
    def load(cls, directory: Path | str) -> TextTokenizer:
        """Load `tokenizer.json`, else a BERT `vocab.txt` (lowercasing unless tokenizer_config.json says not)."""
        directory = Path(directory)
        if (directory / TOKENIZER_FILE).is_file():
            return cls(Tokenizer.from_file(str(directory / TOKENIZER_FILE)), directory)
        if (directory / VOCAB_FILE).is_file():
            return cls(_from_vocab_txt(directory), directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory} is not a directory")
        raise FileNotFoundError(f"{directory} holds neither {TOKENIZER_FILE} nor {VOCAB_FILE}")

    @classmethod
    def from_str(cls, text: str) -> TextTokenizer:
        """The tokenizer `to_str` wrote (kept inside checkpoints, so a run started from one gets its vocabulary)."""
        return cls(Tokenizer.from_str(text))

    def to_str(self) -> str:
        """The whole tokenizer as `tokenizer.json` text."""
        return self._tokenizer.to_str()

    def save(self, directory: Path | str) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tokenizer.save(str(directory / TOKENIZER_FILE))
        self.directory = directory

    def encode(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [N, max_len] int64 (tokens then [SEP], truncated to fit, right-padded) and mask [N, max_len] bool."""
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1 (room for [SEP]), got {max_len}")
        rows = [
            encoding.ids[: max_len - 1]
            for encoding in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ]
        lengths = torch.tensor([len(row) + 1 for row in rows], dtype=torch.int64)
        mask = torch.arange(max_len)[None, :] < lengths[:, None]
        ids = torch.full((len(texts), max_len), self.pad_id, dtype=torch.int64)
        # row-major order of the mask's True cells is each row's tokens then its [SEP], row after row
        ids[mask] = torch.tensor([token for row in rows for token in (*row, self.sep_id)], dtype=torch.int64)
        return ids, mask

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Text of each row, special tokens dropped."""
        return self._tokenizer.decode_batch(ids.tolist(), skip_special_tokens=True)

    def maskable(self, ids: torch.Tensor) -> torch.Tensor:
        """True where masked modelling may mask and predict a token (never a special id)."""
        return ~torch.isin(ids, self.special_ids)


def _find_token(tokenizer: Tokenizer, spellings: Sequence[str]) -> int | None:
    for spelling in spellings:
        token_id = tokenizer.token_to_id(spelling)
        if token_id is not None:
            return token_id
    return None


def _from_vocab_txt(directory: Path) -> Tokenizer:
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    tokenizer = Tokenizer(WordPiece.from_file(str(directory / VOCAB_FILE), unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=bool(config.get("do_lower_case", True)))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens([t for t in _SPECIAL_TOKENS if tokenizer.token_to_id(t) is not None])
    return tokenizer
