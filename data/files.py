"""
data/files.py — the two file operations every prepare script needs.

write_atomic : write to path.tmp, then rename, so an interrupted run never leaves half a file at path
               (text is UTF-8 with "\\n" line ends on every platform); write_json the same for JSON.
download_once: fetch a URL into a file unless the file is already there, so a second run needs no
               network; a failed or cut download writes nothing. Raises OSError (or
               http.client.HTTPException) when it cannot; each caller
               decides what that means (an error naming the local-path flag, or a fallback corpus).
"""
import json
import os
import sys
import urllib.request


def write_atomic(path: str, data: str | bytes) -> None:
    tmp = path + ".tmp"
    if isinstance(data, bytes):
        with open(tmp, "wb") as f:
            f.write(data)
    else:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(data)
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


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
