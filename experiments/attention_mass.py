"""
attention_mass.py — how much of each head's attention a prefix takes, drawn as a layer × head heatmap.

    python experiments/attention_mass.py --base=out/demo/base/best.pt --prefix=out/demo/e2e_prefix/prefix.pt \\
        --data=data/e2e/test.jsonl --out=out/demo/e2e_mass.png
    python experiments/attention_mass.py --base=out/demo/base/best.pt --random_prefix=10 --text="name[The Mill] ||" \\
        --out=random_mass.png

For every layer and head: the share of attention that goes to the prefix slots, averaged over the query
positions of each input, then over the inputs (the first --examples prompt + completion pairs of --data, or
--text). A soft prompt is read the same way: its keys and values are a prefix too. --random_prefix measures
a prefix as tuning starts it (PrefixTuning's random initialisation), the baseline a trained one moves from.
The numbers are printed as a table and drawn on a fixed 0..1 scale (analysis.plot_mass).
"""
import os
import sys
from dataclasses import dataclass

import torch

# run as a script, Python puts this folder on sys.path, not the repo root that holds model.py and prefixgpt/
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from data.tasks import read_jsonl  # noqa: E402
from data.tokenizer import get_tokenizer  # noqa: E402
from prefix import PrefixTuning  # noqa: E402
from prefixgpt.analysis import average_prefix_mass, plot_mass  # noqa: E402
from prefixgpt.checkpoint import load_model, load_prefix, weights_fingerprint  # noqa: E402
from prefixgpt.cli import main_guard, parse, setting  # noqa: E402
from prefixgpt.runtime import DEVICE_PATTERN, setup_runtime  # noqa: E402


@dataclass
class MassConfig:
    base: str = "out/demo/base/best.pt"      # a train.py checkpoint, a GPT-2 name or a Hugging Face folder
    prefix: str = ""                         # a prefix file (prefix or prompt tuning); or --random_prefix
    random_prefix: int = setting(0, min=0)   # slots of a freshly initialised prefix, when there is no --prefix
    text: str = "\n"                         # the input, when there is no --data
    data: str = ""                           # a task JSONL: its first --examples prompt + completion pairs
    examples: int = setting(20, min=1)
    out: str = "attention_mass.png"
    seed: int = 1337                         # draws the random prefix
    device: str = setting("auto", pattern=DEVICE_PATTERN)

    def validate(self):
        if bool(self.prefix) == bool(self.random_prefix):
            raise ValueError("give one prefix: --prefix=FILE or --random_prefix=P (a number of slots), not both")
        if not self.out.endswith(".png"):
            raise ValueError(f"--out={self.out!r} must name a .png file")


def main(argv):
    cfg = MassConfig()
    parse(argv, cfg, prog="experiments/attention_mass.py", description=__doc__.split("\n\n")[0])
    rt = setup_runtime(cfg.device, "float32", cfg.seed)
    model, ckpt = load_model(cfg.base, rt.device)
    tokenizer = get_tokenizer(ckpt["tokenizer"])
    if cfg.prefix:
        prefix, _ = load_prefix(cfg.prefix, model, tokenizer.name, weights_fingerprint(model))
        label = cfg.prefix
    else:
        prefix, label = PrefixTuning(model.config, cfg.random_prefix), f"random prefix of {cfg.random_prefix}"
    if cfg.data:
        rows = read_jsonl(cfg.data, need=("prompt",))[:cfg.examples]
        inputs = [tokenizer.encode(r["prompt"] + r.get("completion", "")) for r in rows]
    else:
        inputs = [tokenizer.encode(cfg.text)]
    with torch.no_grad():
        mass = average_prefix_mass(model, inputs, prefix.to(rt.device).eval()(model))     # (n_layer, n_head)
    print(f"share of attention on the prefix ({label}, {len(inputs)} input(s)), rows layers, columns heads:")
    for layer, row in enumerate(mass.tolist()):
        print(f"  layer {layer:>2}: " + " ".join(f"{m:.3f}" for m in row))
    plot_mass(mass, cfg.out, f"attention on the prefix: {label}, {len(inputs)} input(s)")
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main_guard(main)
