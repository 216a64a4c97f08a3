"""Downloads, for real: the prepare scripts (and demo.py) fetch release-shaped files from an HTTP server
on 127.0.0.1, run in a background thread for the length of one test. No outside network is used."""
import csv
import http.server
import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import zipfile
from types import SimpleNamespace

import pytest

from data.e2e import prepare as e2e
from data.files import download_once
from data.shakespeare import prepare as shakespeare
from data.sst2 import prepare as sst2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_DATA = ("PREFIXGPT_E2E", "PREFIXGPT_SST2", "PREFIXGPT_SHAKESPEARE")  # these would skip the download
URLS = ("PREFIXGPT_E2E_URL", "PREFIXGPT_SST2_URL", "PREFIXGPT_SHAKESPEARE_URL")


@pytest.fixture(autouse=True)
def no_outside_data(monkeypatch):
    """Only what a test sets: no local-data or mirror variables from the shell, and no proxy for 127.0.0.1."""
    for name in LOCAL_DATA + URLS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def server():
    """server.files maps a path ("/e2e.zip") to the bytes served there; other paths get 404. For a path in
    server.cut, the response promises all the bytes (Content-Length) but sends half and hangs up.
    server.hits lists the paths asked for."""
    files, cut, hits = {}, set(), []

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # seconds: a stalled client cannot hold a thread for longer

        def do_GET(self):
            hits.append(self.path)
            if self.path not in files:
                self.send_error(404)
                return
            body = files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2] if self.path in cut else body)  # HTTP/1.0: then it closes

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(files=files, cut=cut, hits=hits, url=f"http://127.0.0.1:{httpd.server_port}")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def zip_of(members: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in members.items():
            z.writestr(name, text if isinstance(text, bytes) else text.encode("utf-8"))
    return buf.getvalue()


def e2e_csv(first: int, n_mrs: int) -> str:
    """An E2E CSV as the release has it: header mr,ref, quoted fields, two references per MR."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["mr", "ref"])
    for i in range(first, first + n_mrs):
        mr = f"name[Place {i}], food[{('Thai', 'French')[i % 2]}], area[riverside]"
        w.writerows([(mr, f"Place {i} serves food by the river."), (mr, f"By the river, Café {i} is open.")])
    return out.getvalue()


def e2e_release(n_train=32, n_dev=4, n_test=4) -> bytes:
    return zip_of({"e2e-dataset/trainset.csv": e2e_csv(0, n_train),
                   "e2e-dataset/devset.csv": e2e_csv(n_train, n_dev),
                   "e2e-dataset/testset_w_refs.csv": e2e_csv(n_train + n_dev, n_test)})


def sst2_release() -> bytes:
    train = "sentence\tlabel\n" + "".join(f"train sentence {i} , café\t{i % 2}\n" for i in range(10))
    return zip_of({"SST-2/train.tsv": train, "SST-2/dev.tsv": "sentence\tlabel\ndev one .\t0\ndev two .\t1\n",
                   "SST-2/test.tsv": "index\tsentence\n0\tunlabelled .\n"})


CORPUS = "".join(f"{w} said the {a} to the sea.\n" for w in ("Alas", "Lo", "Hark", "Fie")
                 for a in ("king", "fool", "queen", "ghost")) * 40


def script(path, *args, env=None):
    """Run a prepare script as a user would, from the repo root."""
    return subprocess.run([sys.executable, path, *args], cwd=ROOT, env=env or os.environ, capture_output=True,
                          text=True, timeout=120)


def one_line(text: str) -> str:
    assert len(text.strip().splitlines()) == 1, text
    return text


# ---------------------------------------------------------------- download_once

def test_a_download_happens_once_and_only_whole(server, tmp_path):
    server.files["/f.zip"] = b"zip bytes"
    target = str(tmp_path / "sub" / "f.zip")
    download_once(server.url + "/f.zip", target)
    download_once(server.url + "/f.zip", target)     # already there: no second fetch
    assert server.hits == ["/f.zip"] and open(target, "rb").read() == b"zip bytes"
    server.files["/big.zip"] = bytes(range(256)) * 1000
    server.cut.add("/big.zip")
    with pytest.raises(OSError, match="cut short: 128000 of 256000 bytes"):
        download_once(server.url + "/big.zip", str(tmp_path / "big.zip"))
    with pytest.raises(urllib.error.HTTPError, match="404"):
        download_once(server.url + "/missing.zip", str(tmp_path / "missing.zip"))
    assert sorted(os.listdir(tmp_path)) == ["sub"]   # neither a partial file nor a .tmp


def test_a_big_download_shows_its_progress_in_one_line_on_a_terminal(server, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    server.files["/big.zip"] = bytes(3_000_000)
    monkeypatch.setattr(sys, "stderr", Terminal())
    download_once(server.url + "/big.zip", str(tmp_path / "big.zip"))
    shown = sys.stderr.getvalue()
    assert shown.startswith("\r") and shown.endswith("\r3.0 of 3.0 MB\n") and shown.count("\n") == 1
    monkeypatch.setattr(sys, "stderr", io.StringIO())                  # not a terminal (a log file): nothing
    download_once(server.url + "/big.zip", str(tmp_path / "again.zip"))
    assert sys.stderr.getvalue() == "" and os.path.getsize(tmp_path / "again.zip") == 3_000_000


# ---------------------------------------------------------------- E2E

def test_e2e_prepare_downloads_the_release_zip(server, tmp_path):
    server.files["/e2e.zip"] = e2e_release()
    out = tmp_path / "e2e"
    res = script("data/e2e/prepare.py", "--url", server.url + "/e2e.zip", "--out_dir", str(out))
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"] == server.url + "/e2e.zip" and meta["split"] == "official"
    assert {k: v["mrs"] for k, v in meta["splits"].items()} == {"train": 32, "val": 4, "test": 4}
    assert {k: v["lines"] for k, v in meta["splits"].items()} == {"train": 64, "val": 8, "test": 8}
    first = json.loads((out / "train.jsonl").read_text(encoding="utf-8").splitlines()[1])
    assert first == {"prompt": "name[Place 0], food[Thai], area[riverside] ||",
                     "completion": " By the river, Café 0 is open."}     # quoted comma and é read right
    # the zip stays in out_dir: a second run (here through $PREFIXGPT_E2E_URL) needs no server
    server.files.clear()
    env = {**os.environ, "PREFIXGPT_E2E_URL": server.url + "/e2e.zip"}
    assert script("data/e2e/prepare.py", "--out_dir", str(out), env=env).returncode == 0
    assert server.hits == ["/e2e.zip"]


@pytest.mark.parametrize("how", ["404", "cut"])
def test_a_failed_download_leaves_nothing_and_says_so_in_one_line(server, tmp_path, how):
    for path, release in (("/e2e.zip", e2e_release()), ("/sst2.zip", sst2_release())):
        if how == "cut":
            server.files[path] = release
            server.cut.add(path)
    for prepare, path, flag in ((e2e, "/e2e.zip", "--csv"), (sst2, "/sst2.zip", "--dir")):
        with pytest.raises(SystemExit) as e:
            prepare.main(["--url", server.url + path, "--out_dir", str(tmp_path / "out")])
        message = one_line(str(e.value))
        assert "could not download" in message and flag in message
        assert ("404" if how == "404" else "cut short") in message
    assert not list(tmp_path.rglob("*.zip")) and not list(tmp_path.rglob("*.tmp"))


def test_a_saved_file_that_is_not_a_zip_is_one_line(server, tmp_path):
    server.files["/e2e.zip"] = server.files["/sst2.zip"] = b"<html>please log in to the proxy</html>"
    for name, path, flag in (("e2e", "/e2e.zip", "--csv"), ("sst2", "/sst2.zip", "--dir")):
        out = tmp_path / name
        res = script(f"data/{name}/prepare.py", "--url", server.url + path, "--out_dir", str(out))
        assert res.returncode != 0 and "Traceback" not in res.stderr
        message = one_line(res.stderr)
        saved = str(out / ("e2e-dataset.zip" if name == "e2e" else "SST-2.zip"))
        assert saved in message and "not a readable zip" in message and "delete it" in message and flag in message
        assert os.path.exists(saved)   # kept, as everything saved is: the user decides


def test_a_release_member_that_is_not_utf8_names_the_member_and_line(server, tmp_path):
    server.files["/e2e.zip"] = zip_of({"e2e-dataset/trainset.csv": e2e_csv(0, 4),
                                       "e2e-dataset/devset.csv": e2e_csv(4, 2).encode("utf-8").replace(b"\xc3\xa9", b"\xe9"),
                                       "e2e-dataset/testset_w_refs.csv": e2e_csv(6, 2)})
    with pytest.raises(SystemExit) as e:
        e2e.main(["--url", server.url + "/e2e.zip", "--out_dir", str(tmp_path)])
    zip_path = tmp_path / "e2e-dataset.zip"
    assert one_line(str(e.value)).startswith(f"{zip_path}:e2e-dataset/devset.csv:3: not UTF-8 text")
    assert sorted(os.listdir(tmp_path)) == ["e2e-dataset.zip"]   # no split written from a partial read


def test_a_wrong_url_is_one_line(tmp_path):
    for name in ("e2e", "sst2", "shakespeare"):
        res = script(f"data/{name}/prepare.py", "--url", "example.org/x.zip", "--out_dir", str(tmp_path))
        assert res.returncode != 0 and "argument --url" in one_line(res.stderr) and "http://" in res.stderr
    env = {**os.environ, "PREFIXGPT_E2E_URL": "www.example.org/e2e.zip"}    # a bad variable: the same line
    res = script("data/e2e/prepare.py", "--out_dir", str(tmp_path), env=env)
    assert "'www.example.org/e2e.zip'" in one_line(res.stderr) and "PREFIXGPT_*_URL" in res.stderr
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------- SST-2

def test_sst2_prepare_downloads_the_glue_zip(server, tmp_path, monkeypatch):
    server.files["/sst2.zip"] = sst2_release()
    out = tmp_path / "sst2"
    res = script("data/sst2/prepare.py", "--url", server.url + "/sst2.zip", "--out_dir", str(out), "--val_size", "2")
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"] == server.url + "/sst2.zip"
    assert {k: v["lines"] for k, v in meta["splits"].items()} == {"train": 8, "val": 2, "test": 2}
    test = [json.loads(line) for line in (out / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert test[1] == {"prompt": "dev two . Sentiment:", "completion": " positive", "label": 1}
    # the mirror can come from the environment; the cached zip means no second request
    monkeypatch.setenv("PREFIXGPT_SST2_URL", server.url + "/sst2.zip")
    assert sst2.main(["--out_dir", str(out), "--val_size", "2"])["source"] == server.url + "/sst2.zip"
    assert server.hits == ["/sst2.zip"]


# ---------------------------------------------------------------- Tiny Shakespeare

def test_shakespeare_prepare_downloads_the_text(server, tmp_path, monkeypatch):
    server.files["/input.txt"] = CORPUS.encode("utf-8")
    out = tmp_path / "corpus"
    res = script("data/shakespeare/prepare.py", "--url", server.url + "/input.txt", "--out_dir", str(out))
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["source"] == server.url + "/input.txt"
    assert meta["train_tokens"] + meta["val_tokens"] == len(CORPUS.encode("utf-8"))
    assert (out / "input.txt").read_text(encoding="utf-8") == CORPUS           # cached for the next run
    monkeypatch.setenv("PREFIXGPT_SHAKESPEARE_URL", server.url + "/input.txt")
    other = tmp_path / "other"
    assert shakespeare.main(["--out_dir", str(other)])["source"] == server.url + "/input.txt"
    assert server.hits == ["/input.txt"] * 2


def test_shakespeare_falls_back_in_one_line_when_the_download_fails(server, tmp_path):
    server.files["/input.txt"] = CORPUS.encode("utf-8")
    server.cut.add("/input.txt")
    for path in ("/input.txt", "/missing.txt"):
        out = tmp_path / path.strip("/")
        res = script("data/shakespeare/prepare.py", "--url", server.url + path, "--out_dir", str(out))
        assert res.returncode == 0, res.stderr
        notice = one_line(res.stderr)
        assert server.url + path in notice and "pydoc_data.topics" in notice and "--input" in notice
        assert json.loads((out / "meta.json").read_text(encoding="utf-8"))["source"] == "pydoc_data.topics"
        assert not (out / "input.txt").exists() and not (out / "input.txt.tmp").exists()


# ---------------------------------------------------------------- the main job, online

@pytest.mark.slow
@pytest.mark.parametrize("tokenizer,tasks", [("gpt2_2048", ("e2e", "sentiment", "review")), ("byte", ("e2e",))])
def test_the_main_job_runs_end_to_end_downloading_its_data(server, tmp_path, tokenizer, tasks):
    """`make demo` in its --quick form, on small hand-made data served from 127.0.0.1. demo.py passes no
    --url: the environment alone must carry the mirrors to the three prepare scripts. Both tokenizers:
    the default with every task, and bytes (docs/results.md compares `demo.py --tokenizer=byte`) with E2E
    alone, the one task whose text the tokenizer changes most (the others run the same code on it)."""
    server.files["/e2e.zip"] = e2e_release()
    server.files["/input.txt"] = CORPUS.encode("utf-8")
    # SST-2 holds out 1,000 train lines as val, and review writing trains on sentences of 8 words or more
    words = ["a", "fine", "film", "about", "love", "and", "loss", "that", "never", "quite", "works", "."]
    train = "".join(f"{' '.join(words[:8 + i % 4])} {i}\t{i % 2}\n" for i in range(1100))
    server.files["/sst2.zip"] = zip_of({"SST-2/train.tsv": "sentence\tlabel\n" + train,
                                        "SST-2/dev.tsv": "sentence\tlabel\na dull , tired film .\t0\n"
                                                         "a warm and funny film .\t1\n"})
    env = {**os.environ, "PREFIXGPT_E2E_URL": server.url + "/e2e.zip",
           "PREFIXGPT_SHAKESPEARE_URL": server.url + "/input.txt", "PREFIXGPT_SST2_URL": server.url + "/sst2.zip"}
    res = subprocess.run([sys.executable, "demo.py", "--quick", f"--tokenizer={tokenizer}", f"--tasks={','.join(tasks)}",
                          f"--out_dir={tmp_path}/out",
                          f"--data_dir={tmp_path}/data"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert sorted(server.hits) == ["/e2e.zip", "/input.txt", "/sst2.zip"]
    meta = json.loads((tmp_path / "data" / "demo" / "meta.json").read_text())
    assert meta["source"] == server.url + "/input.txt" and meta["tokenizer"] == tokenizer
    assert "demo finished" in res.stdout
    out = res.stdout
    assert len(re.findall(r"all [1-9]\d* frozen tensors bit-identical", out)) == len(tasks)   # prefixes left the base alone
    assert out.count("every tensor of the base trained") == len(tasks)                      # a fine-tuning beside each
    requests = out[out.index("sample.py"):]
    labels = [f"[{task}_prefix/prefix.pt]" for task in tasks] if len(tasks) > 1 else ["[prefix.pt]"]   # short as can be
    for label in ["[no prefix]", *labels]:
        assert label in requests                              # one mixed batch serves every task
    loss = r"\s+\d+\.\d+"
    for task in tasks:                                        # base, prefix and FT side by side, and the gap
        assert re.search(rf"{task}\s+[\d,]+ \([\d.]+%\)" + loss * 3 + r"\s+(BLEU-4|accuracy|test loss)" + loss * 3
                         + r"\s+(-?\d+%|n/a)", out), out[-2000:]
    assert re.search(r"facts carried \d+% / \d+% / \d+% \| names the restaurant \d+% / \d+% / \d+%", out)
    assert re.search(r"BLEU [\d.]+ / [\d.]+ / [\d.]+ \| NIST .* \| METEOR .* \| ROUGE-L .* \| CIDEr [\d.]+ / [\d.]+ / [\d.]+", out)
    assert "Li & Liang" in out
    # the page: one file with every task, every image embedded, and the table's numbers
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "report.html" in out and "<img" in page and "src='http" not in page
    images = page.count("data:image/png;base64,")
    assert images == len(tasks) + 1                           # a curve per task and the attention map
    for task in tasks:
        assert f"id='task-{task}'" in page
    table = out[out.rindex("=== one frozen base"):out.index("the demo's page")].strip()
    for number in re.findall(r"\d+\.\d+", table):
        assert number in page
