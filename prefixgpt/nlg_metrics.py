"""
The five scores of the E2E challenge (Dušek et al., 2020) that Li & Liang's table reports: BLEU, NIST,
METEOR, ROUGE-L and CIDEr, each a readable function over multi-reference data, in plain Python.

    from prefixgpt.nlg_metrics import e2e_scores
    e2e_scores(hypotheses, references)   # references[i]: every human reference of hypotheses[i]'s input
    # {'BLEU': 41.2, 'NIST': 5.1, 'METEOR': 33.0, 'ROUGE-L': 55.2, 'CIDEr': 1.1}

How each is defined here, and where it differs from the challenge's scripts (which call mteval-v13a.pl
for BLEU and NIST, METEOR 1.5 in Java, and the MS-COCO caption code for ROUGE-L and CIDEr):
  BLEU-4   metrics.corpus_bleu: corpus-level, clipped n-gram precisions 1..4, brevity penalty against the
           closest reference length, on metrics.tokenize's tokens (case kept). 0..100.
  NIST     Doddington (2002), n-grams 1..5: each matched n-gram weighs its information in the references,
           info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)); per n, the summed weight of the matches
           over the count of hypothesis n-grams; times a length penalty exp(β · log²(min(1, L_hyp/L_ref)))
           with β set so that the penalty is 0.5 at L_hyp/L_ref = 2/3. Matches are clipped to the most
           times any one reference holds the n-gram (as BLEU's are); L_ref is each input's mean reference
           length. Same tokens as BLEU. Unbounded, ~2–10.
  METEOR   a stated variant, not METEOR 1.5 (which needs WordNet's synonyms and paraphrase tables):
           unigrams aligned by exact match, then by stem (stem() below), preferring the alignment that
           keeps a run going; F = P·R / (α·P + (1−α)·R); fragmentation penalty γ · (chunks / matches)^θ;
           METEOR 1.5's English weights α = 0.85, θ = 0.2, γ = 0.6 (Denkowski & Lavie 2014), without its
           synonym and paraphrase stages and without its content/function-word weighting (δ); the best
           reference per hypothesis, the mean over hypotheses. Lowercased. 0..100. Without synonyms it
           finds fewer matches than METEOR 1.5: compare it between this project's runs.
  ROUGE-L  the COCO form: the longest common subsequence with each reference, the best precision and the
           best recall over the references, F_β = (1+β²)·P·R / (R + β²·P) with β = 1.2; the mean over
           hypotheses. Lowercased, punctuation dropped. 0..100.
  CIDEr-D  Vedantam et al. (2015), COCO's CIDEr-D: n-grams 1..4 weighted by tf-idf (idf over the inputs'
           reference sets), cosine similarity with each reference with the hypothesis's counts clipped to
           the reference's, a Gaussian length penalty exp(−(len_h − len_r)² / (2σ²)) with σ = 6, the mean
           over n and over references, × 10; the mean over hypotheses. Lowercased, punctuation dropped.
           Unbounded, ~0–10 (the paper reports 2.49).
The tokenisations are the project's own (metrics.tokenize), so the numbers compare between this
project's runs; against the paper, compare the ranking and the ratios, not the last digit.
"""
import math
from collections import Counter

from prefixgpt.metrics import corpus_bleu, ngrams, tokenize

# Li & Liang (2021), Table 1, GPT-2 medium on E2E's official test set: their numbers, not measured here
LI_LIANG_E2E = {"fine-tuning": {"BLEU": 68.2, "NIST": 8.62, "METEOR": 46.2, "ROUGE-L": 71.0, "CIDEr": 2.47},
                "prefix": {"BLEU": 69.7, "NIST": 8.81, "METEOR": 46.1, "ROUGE-L": 71.4, "CIDEr": 2.49}}
METRICS = ("BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr")


def li_liang_numbers(*rows: str) -> str:
    """Their table's rows as text, e.g. li_liang_numbers("prefix", "fine-tuning") →
    "prefix BLEU 69.7, NIST 8.81, …; fine-tuning BLEU 68.2, …", for the scripts that print them beside ours."""
    return "; ".join(f"{row} " + ", ".join(f"{k} {v}" for k, v in LI_LIANG_E2E[row].items()) for row in rows)


def _check(hypotheses, references):
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{i}] must be a non-empty list of strings")


def _words(text: str) -> list[str]:
    """Lowercased tokens without punctuation (what COCO's tokeniser leaves for ROUGE-L and CIDEr)."""
    return [t for t in tokenize(text, lowercase=True) if t[0].isalnum() or t[0] == "_"]


def corpus_nist(hypotheses: list[str], references: list[list[str]], max_n: int = 5) -> float:
    """NIST score (module docstring): information-weighted n-gram matches × a length penalty."""
    _check(hypotheses, references)
    hyps = [tokenize(h) for h in hypotheses]
    refs = [[tokenize(r) for r in rs] for rs in references]
    # information weights from every reference of the corpus
    counts, n_words = Counter(), 0
    for rs in refs:
        for r in rs:
            n_words += len(r)
            for n in range(1, max_n + 1):
                counts.update(ngrams(r, n))

    def info(gram: tuple) -> float:   # bits the last word of the n-gram adds: rare continuations weigh more
        context = counts[gram[:-1]] if len(gram) > 1 else n_words
        return math.log2(context / counts[gram])

    matched, total = [0.0] * max_n, [0] * max_n
    hyp_len = ref_len = 0.0
    for h, rs in zip(hyps, refs):
        hyp_len += len(h)
        ref_len += sum(len(r) for r in rs) / len(rs)
        for n in range(1, max_n + 1):
            best = Counter()
            for r in rs:
                best |= ngrams(r, n)   # the most times any one reference has each n-gram
            grams = ngrams(h, n)
            matched[n - 1] += sum(min(c, best[g]) * info(g) for g, c in grams.items() if best[g])
            total[n - 1] += sum(grams.values())
    score = sum(m / t for m, t in zip(matched, total) if t)
    beta = math.log(0.5) / math.log(1.5) ** 2   # the penalty is 0.5 when the output is 2/3 of the length
    ratio = min(1.0, hyp_len / ref_len) if ref_len else 0.0
    return score * math.exp(beta * math.log(ratio) ** 2) if ratio > 0 else 0.0


def stem(word: str) -> str:
    """A light English stemmer for METEOR's second matching stage: it strips one common inflection
    ("serves" → "serv", "located" → "locat", "priced" → "pric", "families" → "famil") and keeps at least
    three letters. Not Porter's algorithm: enough that "serve" and "serves" match."""
    for suffix in ("ies", "ing", "ed", "es", "ly", "s", "e", "y"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[:-len(suffix)]
    return word


def _align(h: list[str], r: list[str]) -> list[tuple[int, int]]:
    """METEOR's alignment: (hypothesis position, reference position) pairs, exact matches first, then stem
    matches among what is left; each hypothesis word takes the free reference position that continues the
    previous pair's run if there is one, else the first free one."""
    pairs, used_h, used_r = [], set(), set()
    for same in (lambda a, b: a == b, lambda a, b: stem(a) == stem(b)):
        last = None
        for i, w in enumerate(h):
            if i in used_h:
                last = dict(pairs).get(i, last)
                continue
            free = [j for j, v in enumerate(r) if j not in used_r and same(w, v)]
            if free:
                j = last + 1 if last is not None and last + 1 in free else free[0]
                pairs.append((i, j))
                used_h.add(i)
                used_r.add(j)
                last = j
    return sorted(pairs)


def meteor_segment(hypothesis: str, reference: str, alpha: float = 0.85, gamma: float = 0.6,
                   theta: float = 0.2) -> float:
    """METEOR of one hypothesis against one reference, 0..1 (module docstring)."""
    h, r = tokenize(hypothesis, lowercase=True), tokenize(reference, lowercase=True)
    pairs = _align(h, r)
    m = len(pairs)
    if m == 0:
        return 0.0
    precision, recall = m / len(h), m / len(r)
    f_mean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    # a chunk is a run of pairs adjacent in both sentences; fewer, longer chunks = better word order
    chunks = 1 + sum(1 for (i, j), (k, l) in zip(pairs, pairs[1:]) if not (k == i + 1 and l == j + 1))
    return f_mean * (1 - gamma * (chunks / m) ** theta)


def corpus_meteor(hypotheses: list[str], references: list[list[str]]) -> float:
    """Mean over hypotheses of the best METEOR over its references, 0..100."""
    _check(hypotheses, references)
    return 100 * sum(max(meteor_segment(h, r) for r in rs) for h, rs in zip(hypotheses, references)) / len(hypotheses)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row kept)."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l_segment(hypothesis: str, refs: list[str], beta: float = 1.2) -> float:
    """ROUGE-L of one hypothesis against its references (COCO's form, module docstring), 0..1."""
    h = _words(hypothesis)
    best_p = best_r = 0.0
    for ref in refs:
        r = _words(ref)
        lcs = lcs_length(h, r)
        if lcs:
            best_p, best_r = max(best_p, lcs / len(h)), max(best_r, lcs / len(r))
    if best_p == 0 or best_r == 0:
        return 0.0
    return (1 + beta ** 2) * best_p * best_r / (best_r + beta ** 2 * best_p)


def corpus_rouge_l(hypotheses: list[str], references: list[list[str]]) -> float:
    _check(hypotheses, references)
    return 100 * sum(rouge_l_segment(h, rs) for h, rs in zip(hypotheses, references)) / len(hypotheses)


def corpus_cider_d(hypotheses: list[str], references: list[list[str]], max_n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D (module docstring): tf-idf n-gram cosine with clipping and a length penalty, × 10."""
    _check(hypotheses, references)
    refs = [[_words(r) for r in rs] for rs in references]
    # document frequency: in how many inputs' reference sets an n-gram occurs (once per input)
    df = Counter(g for rs in refs for g in {g for r in rs for n in range(1, max_n + 1) for g in ngrams(r, n)})
    log_n = math.log(len(refs))

    def tfidf(tokens: list[str]) -> list[dict]:   # one vector per n: n-gram → count · idf
        return [{g: c * (log_n - math.log(max(1, df[g]))) for g, c in ngrams(tokens, n).items()}
                for n in range(1, max_n + 1)]

    def norm(v: dict) -> float:
        return math.sqrt(sum(x * x for x in v.values()))

    total = 0.0
    for hyp, rs in zip(hypotheses, refs):
        h = _words(hyp)
        vh = tfidf(h)
        score = 0.0
        for r in rs:
            vr = tfidf(r)
            penalty = math.exp(-((len(h) - len(r)) ** 2) / (2 * sigma ** 2))
            for a, b in zip(vh, vr):
                dot = sum(min(x, b[g]) * b[g] for g, x in a.items() if g in b)   # clipped: no reward for repeats
                if dot:
                    score += penalty * dot / (norm(a) * norm(b))
        total += 10 * score / (max_n * len(rs))
    return total / len(hypotheses)


def e2e_scores(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """All five, as Li & Liang's table reports them (BLEU, METEOR and ROUGE-L in 0..100)."""
    return {"BLEU": corpus_bleu(hypotheses, references), "NIST": corpus_nist(hypotheses, references),
            "METEOR": corpus_meteor(hypotheses, references), "ROUGE-L": corpus_rouge_l(hypotheses, references),
            "CIDEr": corpus_cider_d(hypotheses, references)}
