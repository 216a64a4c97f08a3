"""
data/checks.py — checks on what a user hands the data scripts, each failing in one line.

Parser       : argparse.ArgumentParser whose errors are one line ("error: argument --seed: ...; see --help")
               instead of a usage block and an error
fraction, seed, positive, url, tokenizer_name: argparse types that refuse a wrong value where it is parsed
decode_utf8  : a file's bytes as text; bytes that are not UTF-8 text raise ValueError naming the line
"""
import argparse
import http.client
import urllib.parse
import zipfile
import zlib

from data.files import download_once
from data.tokenizer import check_tokenizer_name


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise SystemExit(f"error: {message}; see --help")


def fraction(text: str) -> float:
    value = float(text)  # argparse turns a ValueError into "invalid fraction value: 'abc'"
    if not 0 < value < 1:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (both excluded), got {text}")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def seed(text: str) -> int:
    """A count by another name: argparse names the type in its messages ("invalid seed value"), and a
    negative seed is refused because random.Random(-5) is random.Random(5): two seeds in meta.json, one split."""
    return count(text)


def tokenizer_name(text: str) -> str:
    try:
        return check_tokenizer_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def url(text: str) -> str:
    if urllib.parse.urlsplit(text).scheme not in ("http", "https", "file"):
        raise argparse.ArgumentTypeError(f"must start with http://, https:// or file://, got {text!r} "
                                         "(from the flag or its PREFIXGPT_*_URL variable)")
    return text


def decode_utf8(data: bytes, name: str) -> str:
    """data as open(name, encoding="utf-8-sig") would read it: a leading byte-order mark dropped, "\\r\\n" and
    "\\r" read as "\\n". Invalid UTF-8, or a NUL byte (binary files are full of them), raises ValueError."""
    bad = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = e.start if bad < 0 else min(bad, e.start)
    if bad >= 0:
        line = data.count(b"\n", 0, bad) + 1
        raise ValueError(f"{name}:{line}: not UTF-8 text (byte {bad} is 0x{data[bad]:02x}): "
                         "save it as UTF-8, or pass the right file")
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def read_release(url: str, zip_path: str, names, what: str, how: str, timeout: float = 30.0) -> dict:
    """Download a release zip once (kept at zip_path, so a second run needs no network) and return
    {member name: (bytes, "zip:member")} for each wanted member, found by file name whatever folder it
    sits in. Every problem is a one-line SystemExit that ends by saying how to use a local copy."""
    try:
        download_once(url, zip_path, timeout)
    except (OSError, http.client.HTTPException) as e:  # no network, refused, timed out, HTTP error, cut short
        raise SystemExit(f"could not download {what} from {url} ({e}); {how}") from None
    try:
        with zipfile.ZipFile(zip_path) as z:
            by_name = {n.split("/")[-1]: n for n in z.namelist()}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise SystemExit(f"{zip_path} has no {', '.join(missing)}; delete it to download again, or {how}")
            return {n: (z.read(by_name[n]), f"{zip_path}:{by_name[n]}") for n in names}
    except (zipfile.BadZipFile, zlib.error, OSError) as e:  # e.g. a proxy's HTML page saved as the zip
        raise SystemExit(f"{zip_path} is not a readable zip ({e}); delete it to download again, or {how}") from None
