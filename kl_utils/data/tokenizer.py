"""Tokenizers: a word-level tokenizer built locally for the synthetic miniature, and
`AutoTokenizer` for real LLMs (local path or hub id).

The word-level tokenizer keeps newlines and runs of 2-4 spaces as tokens: otherwise the
whitespace and line-break formats of the augmentation would tokenize exactly like the plain
text and the augmentation would do nothing. Every printable ASCII symbol is in the vocabulary,
so formatting with brackets, quotes, `**`, `#` and tags never produces [UNK]."""
from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIAL = {"pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "[BOS]", "eos_token": "[EOS]"}
# newline, tab, runs of 2-4 spaces, words, single symbols; single spaces are dropped.
SPLIT_PATTERN = r"\n|\t| {2,4}|\w+|[^\w\s]"
WHITESPACE_TOKENS = ["\n", "\t", "  ", "   ", "    "]


def pre_tokenizer():
    return pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True)


def build_word_tokenizer(texts, extra_words=()) -> PreTrainedTokenizerFast:
    """Word-level vocabulary over `texts` (+ extra words), sorted for determinism."""
    pre = pre_tokenizer()
    words = set(extra_words) | set(string.punctuation) | set(string.ascii_letters) | set(string.digits)
    for text in texts:
        words.update(piece for piece, _ in pre.pre_tokenize_str(text))
    words -= set(WHITESPACE_TOKENS)
    vocab_list = list(SPECIAL.values()) + WHITESPACE_TOKENS + sorted(words)
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins with spaces, tidies " ,"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.padding_side = "right"
    return fast


def load_tokenizer(path_or_id: str | Path, **kwargs):
    """A saved word-level tokenizer or any hub/local tokenizer. Makes sure a pad token exists."""
    from kl_utils.core.hub import from_pretrained
    tok = from_pretrained(AutoTokenizer, path_or_id, "tokenizer", **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
