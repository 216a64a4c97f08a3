"""
data/tokenizer.py — the two tokenizers, behind one small interface:

    tok = get_tokenizer("byte")          # or "gpt2"
    ids = tok.encode("To be, or not")    # list[int]
    tok.decode(ids), tok.vocab_size, tok.eot_token, tok.name

byte : UTF-8 bytes, vocabulary 256. Works offline and encodes any text. On pure-ASCII text such as
       Tiny Shakespeare it is one token per character, the same sequence as nanoGPT's char level, so
       validation losses compare directly. Its end-of-completion marker is "\n" (byte 10): the
       vocabulary stays 256, and the model learns from the corpus that lines end there.
gpt2 : GPT-2's BPE through tiktoken (vocabulary 50257, end marker <|endoftext|> = 50256).
"""
import numpy as np


class ByteTokenizer:
    name = "byte"
    vocab_size = 256
    eot_token = 10  # "\n"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        # a sampled sequence can cut a multi-byte character in two: show U+FFFD rather than fail
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class GPT2Tokenizer:
    name = "gpt2"
    vocab_size = 50257
    eot_token = 50256

    def __init__(self):
        import tiktoken  # imported here so the byte tokenizer never needs it
        try:
            self.enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise ValueError("cannot load tiktoken's GPT-2 files: go online once, or set TIKTOKEN_CACHE_DIR "
                             "to a folder that holds them, or use --tokenizer=byte "
                             f"({type(e).__name__})") from None

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)   # plain text: "<|endoftext|>" in it is not special

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])


TOKENIZERS = {"byte": ByteTokenizer, "gpt2": GPT2Tokenizer}


def get_tokenizer(name: str):
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}: choose one of {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name]()


def token_dtype(vocab_size: int):
    """Smallest unsigned dtype for the .bin files: uint16 holds ids below 65536."""
    return np.uint16 if vocab_size <= 65536 else np.uint32
