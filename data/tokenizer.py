"""
data/tokenizer.py — the two tokenizers, behind one small interface:

    from data.tokenizer import get_tokenizer
    tok = get_tokenizer("byte")          # or "gpt2", or "gpt2_2048"
    ids = tok.encode("To be, or not")    # list[int]
    tok.decode(ids), tok.vocab_size, tok.eot_token, tok.name

byte      : UTF-8 bytes, vocabulary 256. Needs nothing, works offline and encodes any text. On pure-ASCII
            text such as Tiny Shakespeare it is one token per character: the same sequence as nanoGPT's
            char-level data, so validation losses compare directly.
gpt2      : GPT-2's BPE through tiktoken (vocabulary 50257). tiktoken downloads its files once; offline,
            set TIKTOKEN_CACHE_DIR to a folder that already holds them.
gpt2_<K>  : GPT-2's BPE with only its first K - 256 merges (vocabulary K, 256 < K < 50257), e.g. gpt2_2048.
            A BPE vocabulary is a ranked list: GPT-2's tokens 0..255 are the 256 bytes and token 256 + m is
            the m-th merge it learned, most useful first. Stopping after K - 256 merges gives a smaller
            vocabulary whose ids are GPT-2's own, that still encodes any text (the bytes are all in it),
            and whose tokens are the common pieces of English (" the", "ing", " world"; GPT-2's later
            tokens, such as " restaurant" = 7072, are spelled from them).
            Why the demo uses it: a small model's cost per token barely grows with K = 2048 (the output
            layer is 2048 × n_embd), but each token carries ~2.6 bytes of the demo's corpus instead of 1
            (prepare.py prints the figure), so the same CPU minutes pretrain on ~2.5 × as much text and
            the context holds ~2.6 × as many words.
"""
import re

import numpy as np


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0..255).

    eot_token is "\\n" (byte 10), the marker that ends a task completion. A dedicated end token would
    grow the vocabulary to 257 and the model would only ever see it in fine-tuning data; a newline
    keeps the vocabulary at 256, and the model has already learned from the corpus where lines end.
    """
    name = "byte"
    vocab_size = 256
    eot_token = 10  # "\n"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        # ids: any iterable of ints (list, np.ndarray, 1-D LongTensor). A sampled sequence can end in
        # the middle of a multi-byte character: show U+FFFD there rather than raise.
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (tiktoken "gpt2"); eot_token is <|endoftext|> = 50256, GPT-2's own."""
    name = "gpt2"
    vocab_size = 50257
    eot_token = 50256

    def __init__(self, vocab_size: int | None = None):
        import socket
        import tiktoken  # imported here, so the byte tokenizer works without tiktoken's files

        # tiktoken fetches its two files with no timeout when they are not cached; a firewall that drops
        # packets would hang us for minutes. A default socket timeout bounds that wait.
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(10)
        try:
            self.enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise ValueError(
                "cannot load tiktoken's GPT-2 files: set TIKTOKEN_CACHE_DIR to a folder that holds them, "
                f"or go online once, or use the byte tokenizer ({type(e).__name__})") from None
        finally:
            socket.setdefaulttimeout(old_timeout)
        if vocab_size is not None:   # keep the first vocab_size ranks: the bytes, then the first merges
            # (tiktoken has no public reader of an encoding's ranks; _mergeable_ranks is what it builds from)
            kept = {piece: rank for piece, rank in self.enc._mergeable_ranks.items() if rank < vocab_size}
            self.enc = tiktoken.Encoding(name=f"gpt2_{vocab_size}", pat_str=self.enc._pat_str,
                                         mergeable_ranks=kept, special_tokens={})
            self.name, self.vocab_size = f"gpt2_{vocab_size}", vocab_size
            # <|endoftext|> is not in a cut vocabulary; a completion ends at a newline, as with bytes
            self.eot_token = self.enc.encode_ordinary("\n")[0]   # 198

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: the text is plain data, so a literal "<|endoftext|>" in it is just characters,
        # never the special end token (encode() would raise on it instead).
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])  # invalid UTF-8 at a cut → U+FFFD, as for bytes


TOKENIZERS = {"byte": ByteTokenizer, "gpt2": GPT2Tokenizer}


def check_tokenizer_name(name: str) -> str:
    """`name` if it names a tokenizer, else ValueError saying which names are valid (loads nothing, so a
    command line can check it where it is parsed)."""
    if (m := re.fullmatch(r"gpt2_([0-9]+)", name)):
        if not 256 < int(m.group(1)) < GPT2Tokenizer.vocab_size:
            raise ValueError(f"tokenizer {name!r}: the vocabulary must be between 257 and "
                             f"{GPT2Tokenizer.vocab_size - 1} (gpt2 is the whole of GPT-2's), got {m.group(1)}")
    elif name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}: choose one of {', '.join(TOKENIZERS)}, or gpt2_<K> "
                         f"(GPT-2's first K tokens, e.g. gpt2_2048)")
    return name


def get_tokenizer(name: str):
    """A tokenizer by name ("byte", "gpt2" or "gpt2_<K>"); ValueError naming the valid names otherwise."""
    check_tokenizer_name(name)
    if name.startswith("gpt2_"):
        return GPT2Tokenizer(int(name[len("gpt2_"):]))
    return TOKENIZERS[name]()


def token_dtype(vocab_size: int):
    """dtype for token ids in .bin files: uint16 (2 bytes a token) holds ids 0..65535, so any
    vocabulary up to 65536 (both of ours) fits; larger ones need uint32."""
    return np.uint16 if vocab_size <= 65536 else np.uint32
