"""A deterministic WordPiece vocabulary learnt from word counts.

Why not `tokenizers.trainers.WordPieceTrainer`: it is not deterministic (huggingface/tokenizers
issue #1794, PR #2066). Its continuing-subword tokens (`##x`) get ids in hash-map iteration order,
which changes with each process's hash seed, and merge ties are broken by those ids, so the same
captions train different vocabularies in two processes; no trainer option or input ordering
fixes that (initial_alphabet, limit_alphabet and sorted words were tried). This module learns
the vocabulary in the same way (BPE-style merges, the merged pieces become the WordPiece
vocabulary) with every tie broken by the token strings; `tokenizers` still does all encoding.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence

from tokenizers import normalizers, pre_tokenizers

PREFIX = "##"
MAX_WORD_CHARS = 100  # `tokenizers.models.WordPiece`'s default: a longer word always encodes as [UNK]
_NORMALIZE_BATCH = 4096

Pair = tuple[str, str]


def count_words(
    texts: Iterable[str], normalizer: normalizers.Normalizer, pre_tokenizer: pre_tokenizers.PreTokenizer
) -> Counter[str]:
    """How often each pre-tokenised word occurs in `texts`: one streaming pass.

    Texts are normalised a batch at a time, joined by newlines (the BERT normaliser works
    character by character and turns the newline into a space), then split on whitespace; only
    the distinct whitespace-separated chunks go through the pre-tokeniser, which is the slow
    part when called once per caption.
    """
    chunks: Counter[str] = Counter()
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, _NORMALIZE_BATCH)):
        chunks.update(normalizer.normalize_str("\n".join(batch)).split())
    words: Counter[str] = Counter()
    for chunk, count in chunks.items():
        for word, _ in pre_tokenizer.pre_tokenize_str(chunk):
            words[word] += count
    return words


def learn_vocab(word_counts: dict[str, int], vocab_size: int, special_tokens: Sequence[str]) -> dict[str, int]:
    """Token -> id: the special tokens, every character seen alone and as `##c` (sorted), then merges.

    Each merge joins the most frequent adjacent pair of pieces (count ties: the smaller pair of
    strings first) until the vocabulary holds `vocab_size` tokens or every word is one piece.
    As with the Hugging Face trainer, the alphabet is always kept whole, so a corpus with more
    distinct characters than `vocab_size` allows gets a larger vocabulary. Any word made of
    characters seen in training encodes without [UNK].
    """
    counts = {word: count for word, count in word_counts.items() if len(word) <= MAX_WORD_CHARS}
    alphabet = sorted({char for word in counts for char in word})
    vocab = {token: index for index, token in enumerate(dict.fromkeys(special_tokens))}
    for token in alphabet + [PREFIX + char for char in alphabet]:
        vocab.setdefault(token, len(vocab))
    words = [(word[0], *(PREFIX + char for char in word[1:])) for word in counts]
    frequencies = list(counts.values())
    pair_counts: Counter[Pair] = Counter()
    where: dict[Pair, set[int]] = {}
    for index, pieces in enumerate(words):
        for pair in zip(pieces, pieces[1:]):
            pair_counts[pair] += frequencies[index]
            where.setdefault(pair, set()).add(index)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    while heap and len(vocab) < vocab_size:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts[pair] != -negative_count:
            continue  # a stale entry: the count changed after it was pushed
        merged = pair[0] + pair[1][len(PREFIX) :]
        vocab.setdefault(merged, len(vocab))
        changed: set[Pair] = set()
        for index in where.pop(pair):
            old = words[index]
            new = _merge(old, pair, merged)
            if new == old:
                continue  # the word lost this pair to an earlier merge
            words[index] = new
            for stale in zip(old, old[1:]):
                pair_counts[stale] -= frequencies[index]
                changed.add(stale)
            for fresh in zip(new, new[1:]):
                pair_counts[fresh] += frequencies[index]
                where.setdefault(fresh, set()).add(index)
                changed.add(fresh)
        for key in changed:
            if pair_counts[key] > 0:
                heapq.heappush(heap, (-pair_counts[key], key))
    return vocab


def _merge(pieces: tuple[str, ...], pair: Pair, merged: str) -> tuple[str, ...]:
    out: list[str] = []
    position = 0
    while position < len(pieces):
        if position + 1 < len(pieces) and (pieces[position], pieces[position + 1]) == pair:
            out.append(merged)
            position += 2
        else:
            out.append(pieces[position])
            position += 1
    return tuple(out)
