"""
data/tokenizer.py — the two tokenizers, behind one small interface:

    from data.tokenizer import get_tokenizer
    tok = get_tokenizer("byte")          # or "gpt2"
    ids = tok.encode("To be, or not")    # list[int]
    tok.decode(ids), tok.vocab_size, tok.eot_token, tok.name

byte : UTF-8 bytes, vocabulary 256. Needs nothing, works offline and encodes any text. On pure-ASCII
       text such as Tiny Shakespeare it is one token per character: the same sequence as nanoGPT's
       char-level data, so validation losses compare directly.
gpt2 : GPT-2's BPE through tiktoken (vocabulary 50257). tiktoken downloads its files once; offline,
       set TIKTOKEN_CACHE_DIR to a folder that already holds them.
"""
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

    def __init__(self):
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

    def encode(self, text: str) -> list[int]:
        # encode_ordinary: the text is plain data, so a literal "<|endoftext|>" in it is just characters,
        # never the special end token (encode() would raise on it instead).
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])  # invalid UTF-8 at a cut → U+FFFD, as for bytes


TOKENIZERS = {"byte": ByteTokenizer, "gpt2": GPT2Tokenizer}


def get_tokenizer(name: str):
    """A tokenizer by name ("byte" or "gpt2"); ValueError naming the valid names otherwise."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}: choose one of {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name]()


def token_dtype(vocab_size: int):
    """dtype for token ids in .bin files: uint16 (2 bytes a token) holds ids 0..65535, so any
    vocabulary up to 65536 (both of ours) fits; larger ones need uint32."""
    return np.uint16 if vocab_size <= 65536 else np.uint32
