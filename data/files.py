"""
data/files.py — the file operations every script shares: one atomic write, and a cached download.

atomic_write : the one routine that writes a file anyone may rely on (checkpoints, prefix files, JSON,
               plots, token arrays). It writes path.tmp, flushes it to disk, then renames it over path,
               so an interrupted run or a full disk never leaves half a file at path: the old file stays
               whole and the temporary one is removed. write_atomic (text or bytes) and write_json are
               its two common uses.
download_once: fetch a URL into a file unless the file is already there, so a second run needs no
               network; a failed or cut download writes nothing. Raises OSError (or
               http.client.HTTPException) when it cannot; each caller
               decides what that means (an error naming the local-path flag, or a fallback corpus).

It knows nothing about models or tokens: callers hand it bytes, text, or a function that writes.
"""
import errno
import json
import os
import sys
import urllib.request

# errors of the disk itself: reported as "could not write <path>"; any other error passes through as it is
WRITE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def atomic_write(path: str, fill) -> None:
    """Create path by calling fill(f) on a binary file object open for writing, atomically.

    On any failure (no space left, Ctrl-C, an exception in fill) the temporary file is removed and
    whatever was at path before is left as it was; the error is re-raised as an OSError that names path.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())   # on disk before the rename, so a power cut cannot leave an empty file
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno in WRITE_ERRORS:
            raise OSError(f"could not write {path} ({e.strerror or e}); "
                          "anything already there is left as it was") from None
        raise


def write_atomic(path: str, data: str | bytes) -> None:
    """Text (UTF-8, "\\n" line ends on every platform) or bytes, written atomically."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    atomic_write(path, lambda f: f.write(raw))


def write_json(path: str, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str):
    """A JSON file's content; ValueError naming the file when it is not UTF-8 JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def download_once(url: str, path: str, timeout: float = 30.0) -> None:
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    print(f"downloading {url}")
    chunks, done = [], 0
    with urllib.request.urlopen(url, timeout=timeout) as r:
        total = int(r.headers.get("Content-Length") or 0)
        show = total > 2**20 and sys.stderr.isatty()  # progress for big files, on a terminal only
        try:
            while chunk := r.read(2**16):
                chunks.append(chunk)
                done += len(chunk)
                if show:  # "\r": one line that updates in place
                    print(f"\r{done / 1e6:.1f} of {total / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)
        finally:
            if show:
                print(file=sys.stderr)
    if total and done != total:  # read(n) returns what came when the server closes early; say so
        raise OSError(f"download cut short: {done} of {total} bytes")
    write_atomic(path, b"".join(chunks))  # only a whole download is written
