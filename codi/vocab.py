"""Small tokenizers for the tiny and nano text autoencoders, written as ordinary tokenizer files.

The official Optimus VAE uses BERT-base-cased and GPT-2 tokenizers, which a
user supplies from a local folder (:func:`codi.text_vae.load_bert_tokenizer`).
The tiny (tests) and nano (embedded model) presets instead use
character-level vocabularies that this module writes in the same file
formats (``vocab.txt``; ``vocab.json`` + ``merges.txt``), so that the same
``transformers`` tokenizer classes and loading code serve every preset:

- BERT: ``[PAD] [UNK] [CLS] [SEP] [MASK]``, then ``a``-``z``, ``##a``-``##z``
  and a few punctuation marks: 64 entries (words split into characters).
- GPT-2: the 256 byte-level symbols and ``<|endoftext|>``, with no merges:
  every byte is one token; :func:`codi.text_vae.load_gpt2_tokenizer` adds
  Optimus' ``<PAD> <BOS> <EOS>``, 260 entries in all.
"""
from __future__ import annotations

import json
import os
import string
from pathlib import Path

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_PUNCTUATION = [".", ",", "'", "-", "!", "?", "+"]


def bert_char_vocab() -> list[str]:
    letters = list(string.ascii_lowercase)
    return BERT_SPECIALS + letters + [f"##{c}" for c in letters] + BERT_PUNCTUATION


def byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> printable-character table, in byte order (the CLIP tokenizer's alphabet too)."""
    from codi.encoders import bytes_to_unicode

    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def write_char_tokenizers(directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``bert/vocab.txt`` and ``gpt2/{vocab.json,merges.txt}`` under ``directory``; return both folders."""
    root = Path(directory)
    bert, gpt2 = root / "bert", root / "gpt2"
    bert.mkdir(parents=True, exist_ok=True)
    gpt2.mkdir(parents=True, exist_ok=True)
    (bert / "vocab.txt").write_text("\n".join(bert_char_vocab()) + "\n")
    vocab = {symbol: index for index, symbol in enumerate(byte_symbols())}
    vocab["<|endoftext|>"] = len(vocab)
    (gpt2 / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (gpt2 / "merges.txt").write_text("#version: 0.2\n")
    return bert, gpt2


def char_tokenizers(directory: str | os.PathLike):
    """Write the character-level files (if absent) and load them with the project's tokenizer loaders."""
    from codi.text_vae import load_bert_tokenizer, load_gpt2_tokenizer

    root = Path(directory)
    if not (root / "bert" / "vocab.txt").is_file() or not (root / "gpt2" / "vocab.json").is_file():
        write_char_tokenizers(root)
    return (load_bert_tokenizer(root / "bert", vocab_size=len(bert_char_vocab())),
            load_gpt2_tokenizer(root / "gpt2", vocab_size=260))
