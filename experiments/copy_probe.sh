#!/usr/bin/env bash
# copy_probe.sh — one probe of docs/results.md's "Probes of the copying skill": E2E data with invented
# names, a base pretrained on them (and on copy drills), a prefix and a fine-tuning on it, and both
# scored on the unseen-name test split (BLEU, the five metrics, facts carried, names).
#
#   make demo                                  # first: it prepares data/sst2
#   bash experiments/copy_probe.sh             # INVENTED=10, ORDER=text-first, DRILLS=0, STEPS=1600, TUNE=300
#   DRILLS=100000 OUT=out/probe_drills bash experiments/copy_probe.sh
#   python experiments/copy_test.py --base=out/probe/base/best.pt   # then: does the base copy at all?
#
# Each setting is an environment variable; every command is the project's own, printed before it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-out/probe}
INVENTED=${INVENTED:-10}        # copies of each train line under made-up names (data/e2e/prepare.py)
ORDER=${ORDER:-text-first}      # the Facts lines: text-first, facts-first or both
DRILLS=${DRILLS:-0}             # copy drills in the corpus (data/drills.py)
STEPS=${STEPS:-1600}            # pretraining steps
TUNE=${TUNE:-300}               # tuning steps, prefix and fine-tuning alike
EXAMPLES=${EXAMPLES:-100}       # test MRs decoded
SST2_TEXT=${SST2_TEXT:-data/sst2/train_text.txt}   # SST-2's sentences, as make demo's corpus has them
set -x
$PY data/e2e/prepare.py --invented_names "$INVENTED" --mr_format spaced --facts_order "$ORDER" --out_dir "$OUT/e2e"
$PY data/shakespeare/prepare.py --out_dir "$OUT/corpus" --tokenizer gpt2_2048 --copy_drills "$DRILLS" \
    --extra_text "$SST2_TEXT" --extra_text "$OUT/e2e/train_facts.txt"
$PY train.py config/demo_pretrain.toml --data_dir="$OUT/corpus" --out_dir="$OUT/base" --max_iters="$STEPS" \
    --lr_decay_iters="$STEPS" --eval_interval="$STEPS" --log_interval=200
for method in prefix ft; do
    extra=(); [ "$method" = ft ] && extra=(--method=ft --learning_rate=1e-3 --min_lr=1e-4)
    $PY finetune_prefix.py config/finetune_e2e.toml --base="$OUT/base/best.pt" --train_file="$OUT/e2e/train.jsonl" \
        --val_file="$OUT/e2e/val.jsonl" --max_iters="$TUNE" --eval_interval="$TUNE" "${extra[@]}" --out_dir="$OUT/$method"
done
$PY evaluate.py --mode=generate --base="$OUT/base/best.pt" --with_base --prefix="$OUT/prefix/prefix.pt" \
    --data="$OUT/e2e/test.jsonl" --max_examples="$EXAMPLES" --out="$OUT/prefix_completions.jsonl" --overwrite
$PY evaluate.py --mode=generate --base="$OUT/ft/model.pt" --data="$OUT/e2e/test.jsonl" --max_examples="$EXAMPLES" \
    --out="$OUT/ft_completions.jsonl" --overwrite
$PY experiments/copy_test.py --base="$OUT/base/best.pt"
