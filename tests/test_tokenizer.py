"""The trained WordPiece: deterministic across processes, lossless on shapes captions, documented fallbacks."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tokenizers import normalizers, pre_tokenizers

from oner_lab.data import TextTokenizer, shapes
from oner_lab.data.wordpiece import count_words, learn_vocab

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CAPTIONS = 2000
VOCAB_SIZE = 120  # below the full-word vocabulary (~170), so the merge order decides which pieces exist

# Trains in a fresh interpreter (its own hash seed) and saves tokenizer.json into argv[1].
_TRAIN_SCRIPT = f"""
import sys
from oner_lab.data import TextTokenizer, shapes
captions = [shapes.make_sample(0, "train", i, 2).captions[0] for i in range({CAPTIONS})]
TextTokenizer.train(iter(captions), {VOCAB_SIZE}).save(sys.argv[1])
"""


def shapes_captions(count: int = CAPTIONS) -> list[str]:
    return [shapes.make_sample(0, "train", index, 2).captions[0] for index in range(count)]


@pytest.fixture(scope="module")
def trained() -> TextTokenizer:
    return TextTokenizer.train(shapes_captions(), VOCAB_SIZE)


def test_training_in_two_processes_writes_byte_identical_files(tmp_path: Path) -> None:
    directories = [tmp_path / "first", tmp_path / "second"]
    processes = [
        subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT, str(d)], stderr=subprocess.PIPE) for d in directories
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr.decode()
    first, second = ((d / "tokenizer.json").read_bytes() for d in directories)
    assert first == second
    assert len(TextTokenizer.load(directories[0]).to_str()) > 0


def test_shapes_captions_round_trip(trained: TextTokenizer) -> None:
    captions = shapes_captions(300)
    ids, mask = trained.encode(captions, 64)
    assert mask.sum(1).max() < 64  # nothing truncated
    decoded = trained.decode(ids)
    assert trained.encode(decoded, 64)[0].equal(ids)
    # Lossless up to spacing: the WordPiece decoder writes "left ; cyan" for "left; cyan".
    assert [text.replace(" ", "") for text in decoded] == [caption.lower().replace(" ", "") for caption in captions]
    assert trained.unk_id is not None and not (ids == trained.unk_id).any()


def test_unseen_word_of_seen_characters_splits_into_pieces(trained: TextTokenizer) -> None:
    raw = trained._tokenizer
    tokens = raw.encode("greenest", add_special_tokens=False).tokens
    assert len(tokens) > 1 and "[UNK]" not in tokens
    assert not tokens[0].startswith("##") and all(token.startswith("##") for token in tokens[1:])
    assert "".join(token.removeprefix("##") for token in tokens) == "greenest"


def test_word_with_an_unseen_character_is_unk(trained: TextTokenizer) -> None:
    tokens = trained._tokenizer.encode("a hexagon", add_special_tokens=False).tokens
    assert tokens == ["a", "[UNK]"]  # no shapes caption has an "x": the whole word is unknown


def test_special_tokens_come_first_and_are_marked_special(trained: TextTokenizer) -> None:
    raw = trained._tokenizer
    assert [raw.token_to_id(token) for token in SPECIALS] == list(range(len(SPECIALS)))
    declared = {token.content for token in raw.get_added_tokens_decoder().values() if token.special}
    assert declared == set(SPECIALS)
    assert (trained.pad_id, trained.unk_id, trained.cls_id, trained.sep_id, trained.mask_id) == (0, 1, 2, 3, 4)
    assert trained.special_ids.tolist() == [0, 1, 2, 3, 4]


def test_vocabulary_holds_vocab_size_tokens_and_every_character_in_both_forms(trained: TextTokenizer) -> None:
    vocab = trained._tokenizer.get_vocab()
    assert len(vocab) == VOCAB_SIZE
    characters = {char for caption in shapes_captions() for char in caption.lower() if not char.isspace()}
    assert all(char in vocab and "##" + char in vocab for char in characters)


def test_count_ties_are_broken_by_the_token_strings() -> None:
    alphabet_size = len(SPECIALS) + 2 * 4  # a b c d, alone and as ##x
    vocab = learn_vocab({"cd": 1, "ab": 1}, alphabet_size + 1, SPECIALS)
    assert "ab" in vocab and "cd" not in vocab
    vocab = learn_vocab({"cd": 2, "ab": 1}, alphabet_size + 1, SPECIALS)
    assert "cd" in vocab and "ab" not in vocab


def test_batched_counting_matches_pre_tokenising_each_text() -> None:
    texts = [
        "A Large RED circle.",
        "Café\u0301 naïve; déjà-vu",
        "日本語の猫",
        "tab\tseparated\nlines",
        "x\x1cy control",
        "end.",
        "",
        "   ",
        "a,b,c",
        "(a) [b] {c}!",
    ] * 3
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    expected = Counter(
        word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    assert count_words(iter(texts), normalizer, pre_tokenizer) == expected
