"""
Evaluation metrics in plain Python: corpus BLEU for generation (E2E), accuracy, macro-F1 and a
confusion matrix for classification (SST-2); and how the scripts report them: the share of the base→FT
gap a method closes, and mean ± std over seeds.

    from prefixgpt.metrics import corpus_bleu, group_references
    prompts, refs = group_references(prompts, completions)   # E2E: every reference of an MR
    print(corpus_bleu(hypotheses, refs))                      # one hypothesis per unique prompt

BLEU here is the standard corpus-level BLEU-4 of Papineni et al. (2002), with no smoothing, on the
simple tokenisation of tokenize() below. Numbers are comparable between runs of this project, but
not exactly with papers that use other tokenisers (e.g. the official E2E script or sacrebleu's 13a).
"""
import math
import re
import statistics
from collections import Counter

# A token is a run of letters/digits/underscore, or any other single non-space character:
# "£20-25, kid-friendly." -> ["£", "20", "-", "25", ",", "kid", "-", "friendly", "."]
# Punctuation then counts as its own token instead of making "centre." differ from "centre".
TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str, lowercase: bool = False) -> list[str]:
    """Split text into tokens (see TOKEN above), optionally lowercased first."""
    return TOKEN.findall(text.lower() if lowercase else text)


def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: list[str], references: list[list[str]], max_n: int = 4,
                lowercase: bool = False) -> float:
    """Corpus BLEU in 0..100. references[i] is the list of reference strings for hypotheses[i].

    For each n in 1..max_n, precision p_n = (sum over the corpus of clipped n-gram matches) /
    (sum over the corpus of hypothesis n-grams); an n-gram's matches are clipped to the most times
    it occurs in any single reference. BLEU = BP * exp(mean of log p_n). The brevity penalty
    BP = exp(1 - r/c) if c < r else 1, with c the total hypothesis length and r the sum, over
    hypotheses, of the reference length closest to that hypothesis's length (ties: the shorter).
    No smoothing: if any p_n is 0 (or has no n-grams at all) the score is 0.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of strings")
    # BEGIN SOLUTION A8.1: clipped n-gram matches and totals summed over the corpus, closest reference lengths, BP
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        h = tokenize(hyp, lowercase)
        rs = [tokenize(r, lowercase) for r in refs]
        hyp_len += len(h)
        ref_len += min((len(r) for r in rs), key=lambda n: (abs(n - len(h)), n))
        for n in range(1, max_n + 1):
            h_counts = ngrams(h, n)
            max_ref = Counter()  # for each n-gram, the most times any one reference has it
            for r in rs:
                max_ref |= ngrams(r, n)  # Counter | Counter keeps the maximum count
            matches[n - 1] += sum(min(c, max_ref[g]) for g, c in h_counts.items())
            totals[n - 1] += sum(h_counts.values())
    if min(matches) == 0:  # covers totals == 0 too; log(0) is undefined, unsmoothed BLEU is 0
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * brevity * math.exp(log_precision)
    # END SOLUTION


def group_references(prompts: list[str], refs: list[str]) -> tuple[list[str], list[list[str]]]:
    """Gather the references that share a prompt: (unique prompts in first-seen order, their refs)."""
    if len(prompts) != len(refs):
        raise ValueError(f"{len(prompts)} prompts but {len(refs)} references")
    grouped: dict[str, list[str]] = {}  # dicts keep insertion order, so first-seen order is kept
    for p, r in zip(prompts, refs):
        grouped.setdefault(p, []).append(r)
    return list(grouped), list(grouped.values())


def _check(y_true, y_pred) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no examples to score")


def accuracy(y_true: list, y_pred: list) -> float:
    """Fraction (0..1) of predictions equal to the true label."""
    _check(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def macro_f1(y_true: list, y_pred: list, labels: list | None = None) -> float:
    """Unweighted mean over classes of F1 (0..1); each class counts the same however rare it is.

    Per class, F1 = 2TP / (2TP + FP + FN), the same as 2PR/(P+R) but also defined when P+R = 0
    (then F1 = 0). labels defaults to every label seen in y_true or y_pred. A class given in
    labels that has no true and no predicted items (TP = FP = FN = 0) has nothing to get right
    or wrong, so it is left out of the mean rather than counted as 0 or 1.
    """
    _check(y_true, y_pred)
    labels = sorted(set(y_true) | set(y_pred)) if labels is None else labels
    scores = []
    for k in labels:
        tp = sum(t == k and p == k for t, p in zip(y_true, y_pred))
        fp = sum(t != k and p == k for t, p in zip(y_true, y_pred))
        fn = sum(t == k and p != k for t, p in zip(y_true, y_pred))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    if not scores:
        raise ValueError(f"none of the labels {labels} occurs in y_true or y_pred")
    return sum(scores) / len(scores)


def confusion_matrix(y_true: list[int], y_pred: list[int], n_classes: int) -> list[list[int]]:
    """m[t][p] = how many items of true class t were predicted as p (rows true, columns predicted)."""
    _check(y_true, y_pred)
    m = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(y_true, y_pred):
        if not (0 <= t < n_classes and 0 <= p < n_classes):
            raise ValueError(f"labels must be integers 0..{n_classes - 1}, found true={t} predicted={p}")
        m[t][p] += 1
    return m


def format_confusion(matrix: list[list[int]], label_names: list[str]) -> str:
    """The matrix as an aligned text table, true classes down, predicted classes across."""
    names = [str(n).strip() for n in label_names]  # SST-2's label names start with a space
    corner = "true \\ pred"
    width = max(len(x) for x in names + [str(c) for row in matrix for c in row])
    lines = [corner.ljust(max(len(corner), width)) + "".join(f"  {n:>{width}}" for n in names)]
    for name, row in zip(names, matrix):
        lines.append(name.ljust(max(len(corner), width)) + "".join(f"  {c:>{width}}" for c in row))
    return "\n".join(lines)


def gap_closed(base: float, tuned: float, ft: float) -> float | None:
    """How much of the way from the base alone to full fine-tuning a method goes, in %:
    100 · (base − tuned) / (base − ft) on a loss. None when fine-tuning did not beat the base (no gap)."""
    return None if base <= ft else 100 * (base - tuned) / (base - ft)


def mean_std(values, digits: int = 3, one_bare: bool = False) -> str:
    """Runs over seeds as "mean ± std" (sample std; None values skipped, "n/a" when none is left). A single
    run shows "± 0" (a table's column stays one format) or, with one_bare, the number alone."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if one_bare and len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values) if len(values) > 1 else 0:.{digits}f}"
