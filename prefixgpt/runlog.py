"""
runlog.py — a run's folder and what a run writes there besides weights.

    claim_run_dir(out_dir, "pretrain", overwrite, resume)   # refuse a folder that holds other work
    write_run_config(out_dir, "pretrain", {...})            # config.json, with the run's kind
    log = MetricsLog(out_dir, append=False)                 # metrics.jsonl, and loss.png on request
    cells = CellLog(path); cells.rows[key]; cells.add(row)  # a grid's finished cells, one a line (compare.py)
    write_json(path, summary)                               # summary.json (never NaN: JSON has none)

Two kinds of run share this layout: "pretrain" (train.py) and "tune" (finetune_prefix.py, any method). A folder
holding one kind is never written into by the other, and a folder holding a run of the same kind only
with --overwrite (or, for pretraining, --resume). This module knows nothing about models or tensors.
"""
import json
import math
import os

from data.files import atomic_write, write_json

KINDS = {"pretrain": "a pretraining run", "tune": "a tuning run (a prefix or another method)"}
SCRIPTS = {"pretrain": "train.py", "tune": "finetune_prefix.py"}
# files that show what a folder holds when an older config.json does not say
SIGNS = {"pretrain": ("last.pt", "best.pt"), "tune": ("prefix.pt", "delta.pt", "model.pt")}


def run_kind(out_dir: str) -> str | None:
    """The kind of run out_dir holds: "pretrain", "tune", "unknown" (a run's files, kind unclear) or None."""
    config = os.path.join(out_dir, "config.json")
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as f:
                kind = json.load(f).get("kind")
            if kind in KINDS:
                return kind
        except (ValueError, OSError, AttributeError):
            pass
    for kind, names in SIGNS.items():
        if any(os.path.exists(os.path.join(out_dir, n)) for n in names):
            return kind
    if any(os.path.exists(os.path.join(out_dir, n)) for n in ("config.json", "metrics.jsonl", "summary.json")):
        return "unknown"
    return None


def claim_run_dir(out_dir: str, kind: str, overwrite: bool = False, resume: bool = False):
    """Raise ValueError unless `kind` may write into out_dir; create it when it may."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out_dir={out_dir} is a file, not a folder: choose a folder for the run")
    found = run_kind(out_dir) if os.path.isdir(out_dir) else None
    if found is not None and found != kind:
        what = KINDS.get(found, "another run's files")
        raise ValueError(f"{out_dir} holds {what}; {SCRIPTS[kind]} will not write into it "
                         "(its files would be replaced): pass --out_dir=<another folder>")
    if found == kind and not (overwrite or resume):
        how = "--resume to continue it, " if kind == "pretrain" else ""
        raise ValueError(f"{out_dir} already holds {KINDS[kind]}: pass {how}--out_dir=... to start elsewhere, "
                         "or --overwrite to replace it")
    os.makedirs(out_dir, exist_ok=True)


def write_run_config(out_dir: str, kind: str, config: dict):
    write_json(os.path.join(out_dir, "config.json"), {"kind": kind, **config})


def finite_or_none(x):
    """A number for JSON: NaN and inf become null (JSON has no NaN; a reader would choke on it)."""
    return x if x is None or math.isfinite(x) else None


class MetricsLog:
    """metrics.jsonl (one JSON object per line) and a loss-curve PNG, both in out_dir."""

    def __init__(self, out_dir: str, append: bool):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.png = os.path.join(out_dir, "loss.png")
        self.rows = []
        if append and os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.rows = [json.loads(line) for line in f if line.strip()]
        else:
            atomic_write(self.path, lambda f: None)

    def write(self, **row):
        row = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()}
        self.rows.append(row)
        with open(self.path, "a", encoding="utf-8") as f:   # appending a line: an interrupted write loses one row
            f.write(json.dumps(row) + "\n")

    def plot(self, title: str):
        plot_losses(self.rows, self.png, title)


def plot_losses(rows, png_path, title):
    """Train loss per logged step (thin) and the evaluated train/val losses (markers)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r for r in rows if r.get("loss") is not None]
    evals = [r for r in rows if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], lw=0.6, alpha=0.5, label="train (batch)")
    evals_train = [r for r in evals if r.get("train_loss") is not None]
    if evals_train:
        ax.plot([r["iter"] for r in evals_train], [r["train_loss"] for r in evals_train], "o-", label="train (eval)")
    if evals:
        ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "s-", label="val (eval)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m}m{s:02d}s"


class CellLog:
    """A JSONL file of finished cells of a grid (compare.py's results.jsonl): one a line, keyed by its "cell"
    field, each appended in one write and flushed to disk, so a crash loses at most the line being written."""

    def __init__(self, path: str):
        self.path, self.rows = path, {}
        self.refresh()

    def refresh(self):
        """Read the rows the file holds now (other processes of the same grid append to it too)."""
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self.rows[row["cell"]] = row
                    except (ValueError, KeyError):
                        pass   # a line cut by a crash mid-write: that cell runs again

    def add(self, row: dict):
        # one write() of the whole line to a file opened for appending: the line lands whole at the end,
        # even when other processes of the grid append to the same file at the same time
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            line = (json.dumps(row) + "\n").encode("utf-8")
            if os.write(fd, line) != len(line):
                raise OSError(f"{self.path}: a short write (disk full?); the cell runs again next time")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.rows[row["cell"]] = row
