"""
report.py — the demo's page: one self-contained HTML file (images embedded as base64) that shows what
`make demo` printed and drew: the table, each task's validation-loss curves of the prefix and of
fine-tuning on one plot, the mixed-batch samples, and the E2E prefix's attention-mass heatmap.

    write_report(out_dir, cfg, rows, table, samples)   # -> out_dir/report.html

It reads only files the demo's steps wrote (each run's metrics.jsonl, e2e_mass.png) and writes one file.
"""
import base64
import html
import io
import json
import os

from data.files import write_atomic


def _curve(path: str) -> list[tuple[int, float]]:
    """(step, val loss) points of one tuning run's metrics.jsonl."""
    points = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if "val_loss" in row and row["val_loss"] is not None:
                    points.append((row["iter"], row["val_loss"]))
    return points


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def curves_png(task: str, runs: dict[str, list[tuple[int, float]]], base_loss: float) -> str:
    """One task's val-loss curves (prefix, fine-tuning) and the base alone as a line, as base64 PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, points in runs.items():
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.axhline(base_loss, color="gray", linestyle="--", label="base alone")
    ax.set_xlabel("tuning step")
    ax.set_ylabel("val loss (nats / token)")
    ax.set_title(f"{task}: validation loss while tuning", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def write_report(out_dir: str, cfg, rows: list[dict], table: str, samples: str) -> str:
    """Write out_dir/report.html and return its path."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>prefixgpt demo</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "pre{background:#f5f5f5;padding:1em;overflow-x:auto;font-size:12px}img{max-width:100%}</style>",
             "</head><body><h1>prefixgpt: one frozen base, a prefix per task</h1>",
             f"<p>Made by <code>python demo.py</code> into <code>{html.escape(out_dir)}</code>; settings in "
             "<code>demo.json</code>, every number below in <code>results.json</code>.</p>",
             "<h2>The table</h2>", f"<pre id='table'>{html.escape(table)}</pre>", "<h2>Validation loss while tuning</h2>"]
    for r in rows:
        tag = "" if len(cfg.seeds) == 1 else f"_s{cfg.seeds[0]}"
        runs = {"prefix": _curve(os.path.join(out_dir, f"{r['task']}_prefix{tag}", "metrics.jsonl")),
                "full fine-tuning": _curve(os.path.join(out_dir, f"{r['task']}_ft{tag}", "metrics.jsonl"))}
        parts.append(f"<h3 id='task-{r['task']}'>{r['task']}</h3>"
                     f"<img alt='{r['task']} val loss' src='data:image/png;base64,{curves_png(r['task'], runs, r['base'])}'>")
    mass = os.path.join(out_dir, "e2e_mass.png")
    if os.path.isfile(mass):
        with open(mass, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        parts.append("<h2>Where the E2E prefix's attention goes</h2><p>The share of each head's attention that "
                     "lands on the prefix's slots, over test inputs (experiments/attention_mass.py).</p>"
                     f"<img alt='e2e attention mass' src='data:image/png;base64,{data}'>")
    parts.append("<h2>One mixed batch: every row its own prefix</h2>"
                 f"<pre id='samples'>{html.escape(samples)}</pre></body></html>")
    path = os.path.join(out_dir, "report.html")
    write_atomic(path, "\n".join(parts) + "\n")
    return path
