"""The E2E scores (prefixgpt/nlg_metrics.py) and the facts check (prefixgpt/facts.py): each metric against
values worked out by hand on small cases, BLEU against sacrebleu and NIST against nltk (test-only oracles),
and the facts check on hand-made sentences, one per way a sentence can state, miss, mistake or invent."""
import math

import pytest

from prefixgpt.facts import check_facts, facts_summary, known_names_of
from prefixgpt.metrics import tokenize
from prefixgpt.nlg_metrics import (corpus_cider_d, corpus_meteor, corpus_nist, corpus_rouge_l, e2e_scores,
                                   lcs_length, meteor_segment, rouge_l_segment, stem)

HYPS = ["The Mill is a pub near the river .", "Zizzi serves cheap Italian food in the city centre ."]
REFS = [["The Mill is a pub by the river .", "There is a pub called The Mill near the river ."],
        ["Zizzi is a cheap Italian place in the city centre .", "In the city centre , Zizzi serves cheap Italian food ."]]


def test_lcs_and_rouge_l_by_hand():
    assert lcs_length("a b c d".split(), "a c d b".split()) == 3 and lcs_length([], ["a"]) == 0
    # hypothesis "the cat sat" (3 words) vs "the cat on the mat sat" (6): LCS 3, P = 1, R = 0.5
    p, r, b = 1.0, 0.5, 1.2
    assert rouge_l_segment("the cat sat", ["the cat on the mat sat"]) == pytest.approx((1 + b * b) * p * r / (r + b * b * p))
    # several references: the best precision and the best recall, each from its own reference
    two = rouge_l_segment("the cat sat", ["the cat on the mat sat", "a cat sat"])   # P = 1 (first); R = 2/3 (second)
    assert two == pytest.approx((1 + b * b) * 1 * (2 / 3) / (2 / 3 + b * b * 1))
    assert corpus_rouge_l(["The cat sat."], [["the cat sat"]]) == pytest.approx(100.0)   # case and punctuation dropped


def test_meteor_by_hand():
    assert meteor_segment("the cat sat", "the cat sat") == pytest.approx(1 - 0.6 * (1 / 3) ** 0.2)   # 1 chunk, 3 matches
    # "sat the cat" vs "the cat sat": 3 matches, 2 chunks ("sat" | "the cat")
    assert meteor_segment("sat the cat", "the cat sat") == pytest.approx(1 - 0.6 * (2 / 3) ** 0.2)
    # stems: "serves" matches "serve" in the second stage; "dog" matches nothing
    p, r = 2 / 3, 2 / 2
    f = p * r / (0.85 * p + 0.15 * r)
    assert meteor_segment("zizzi serves dog", "zizzi serve") == pytest.approx(f * (1 - 0.6 * (1 / 2) ** 0.2))
    assert stem("serves") == stem("serve") == "serv" and stem("families") == "famil" and stem("pub") == "pub"
    assert meteor_segment("nothing here", "the cat sat") == 0
    assert corpus_meteor(["the cat sat"], [["a dog", "the cat sat"]]) == pytest.approx(
        100 * meteor_segment("the cat sat", "the cat sat"))   # the best reference


def test_nist_by_hand_and_against_nltk():
    # one hypothesis equal to its one reference "a b": info(a) = info(b) = log2(2/1) = 1, info(a b) = log2(1/1) = 0
    # unigram score (1 + 1) / 2 = 1, bigram 0 / 1 = 0: NIST = 1, no length penalty
    assert corpus_nist(["a b"], [["a b"]]) == pytest.approx(1.0)
    # half the length of the reference: the penalty exp(β log²(1/2)), β = log 0.5 / log² 1.5
    beta = math.log(0.5) / math.log(1.5) ** 2
    assert corpus_nist(["a"], [["a b"]]) == pytest.approx(1.0 * math.exp(beta * math.log(0.5) ** 2))
    from nltk.translate import nist_score as nltk   # the dev requirements carry it: missing fails, never skips
    one = [[refs[0]] for refs in REFS]   # one reference each: the two definitions are the same
    ours = corpus_nist(HYPS, one)
    theirs = nltk.corpus_nist([[tokenize(r[0])] for r in one], [tokenize(h) for h in HYPS], n=5)
    assert ours == pytest.approx(theirs, rel=1e-9) and ours > 1


def test_bleu_agrees_with_sacrebleu_on_the_same_tokens():
    import sacrebleu
    tok = lambda s: " ".join(tokenize(s))  # noqa: E731
    streams = [[tok(refs[k]) for refs in REFS] for k in range(2)]
    theirs = sacrebleu.corpus_bleu([tok(h) for h in HYPS], streams, tokenize="none", force=True).score
    assert e2e_scores(HYPS, REFS)["BLEU"] == pytest.approx(theirs, abs=1e-9)


def test_cider_d_by_hand():
    # two inputs, one reference each, each hypothesis equal to its reference: for n = 1..3 the cosine is 1
    # with no length penalty; 3-word sentences have no 4-grams (0): CIDEr-D = 10 · (1 + 1 + 1 + 0) / 4
    assert corpus_cider_d(["a b c", "d e f"], [["a b c"], ["d e f"]]) == pytest.approx(7.5)
    # "x" is in every input's references: idf log(2/2) = 0, it weighs nothing, and the unigram cosine is
    # still 1 (from "a", "d"); bigrams 1; no 3- or 4-grams: 10 · 2 / 4 = 5
    assert corpus_cider_d(["x a", "x d"], [["x a"], ["x d"]]) == pytest.approx(5.0)
    # repeating a matched word is not rewarded (clipping) and a length gap is penalised
    assert corpus_cider_d(["a a a b c", "d e f"], [["a b c"], ["d e f"]]) < 10.0
    scores = e2e_scores(HYPS, REFS)
    assert set(scores) == {"BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"} and all(v > 0 for v in scores.values())


@pytest.mark.parametrize("metric", [corpus_nist, corpus_meteor, corpus_rouge_l, corpus_cider_d])
def test_every_metric_refuses_mismatched_or_empty_references(metric):
    with pytest.raises(ValueError, match="hypotheses but"):
        metric(["a"], [])
    with pytest.raises(ValueError, match="non-empty list"):
        metric(["a"], [[]])


MR = "name[Zizzi], eatType[pub], food[Italian], priceRange[cheap], area[riverside], familyFriendly[yes], near[The Mill]"


@pytest.mark.parametrize("output,stated,wrong,added", [
    ("Zizzi is a cheap, family-friendly Italian pub by the river near The Mill.",
     ["name", "eatType", "food", "priceRange", "area", "familyFriendly", "near"], [], []),
    ("Zizzi is an expensive Chinese pub in the city centre, near The Mill. No children.",
     ["name", "eatType", "near"], ["food", "priceRange", "area", "familyFriendly"], []),
    ("The Golden Curry is a pub.", ["eatType"], ["name"], []),
    ("Zizzi is a pub with a 5 out of 5 rating.", ["name", "eatType"], [], ["customer rating"]),
    ("It is not family-friendly.", [], ["familyFriendly"], []),
])
def test_facts_states_misses_mistakes_and_invents(output, stated, wrong, added):
    got = check_facts(MR + " ||", output, known_names={"The Golden Curry", "The Mill", "Zizzi"})
    assert sorted(got["stated"]) == sorted(stated) and sorted(got["wrong"]) == sorted(wrong)
    assert got["added"] == added
    judged = got["stated"] + got["wrong"] + got["missing"]
    assert sorted(judged) == sorted(["name", "eatType", "food", "priceRange", "area", "familyFriendly", "near"])


def test_facts_read_both_mr_formats_and_a_name_inside_a_place_is_no_food():
    spaced = "name : Cotto | food : Indian | near : Raja Indian Cuisine ||"
    assert check_facts(spaced, "Cotto is near Raja Indian Cuisine.")["missing"] == ["food"]   # "Indian" is the name's
    assert check_facts(spaced, "Cotto serves Indian food near Raja Indian Cuisine.")["stated"] == ["name", "food", "near"]
    assert check_facts("no attributes here ||", "anything") == {"stated": [], "missing": [], "wrong": [], "added": []}
    rating = "name[X Y], customer rating[5 out of 5] ||"
    assert check_facts(rating, "X Y has five stars.")["stated"] == ["name", "customer rating"]
    assert check_facts(rating, "X Y is rated 1 out of 5.")["wrong"] == ["customer rating"]


def test_facts_summary_counts_facts_names_wrong_and_added():
    mrs = ["name[A B], food[Italian] ||", "name[C D], food[French] ||"]
    outs = ["A B serves Italian food.", "A B serves Italian food."]        # the second: wrong name, wrong food
    s = facts_summary(mrs, outs, known_names_of(mrs))
    assert (s["facts"], s["names"], s["wrong"], s["added"], s["outputs"]) == (50.0, 50.0, 50.0, 0.0, 2)
    assert s["by_attribute"] == {"name": 50.0, "food": 50.0}
    with pytest.raises(ValueError, match="2 MRs but 1 outputs"):
        facts_summary(mrs, outs[:1])


def test_e2e_on_rows_scores_the_first_n_prompts_against_all_their_references(monkeypatch):
    """compare.py's E2E columns: greedy outputs of the first n distinct MRs, the five scores against every
    reference of each MR, and the facts they carry; all None when no MR is decoded."""
    from prefixgpt import scoring
    rows = [{"prompt": "name[The Mill], eatType[pub] ||", "completion": " The Mill is a pub."},
            {"prompt": "name[The Mill], eatType[pub] ||", "completion": " A pub: The Mill."},
            {"prompt": "name[Zizzi], food[Italian] ||", "completion": " Zizzi serves Italian food."},
            {"prompt": "name[Aromi], food[Thai] ||", "completion": " Aromi serves Thai food."}]
    outputs = ["The Mill is a pub.", "The Mill serves Italian food."]     # the second names another place
    decoded = []
    monkeypatch.setattr(scoring, "complete", lambda model, tok, prefixes, prompts, **kw: decoded.append(prompts)
                        or [outputs[:len(prompts)]])
    model = type("M", (), {"config": type("C", (), {"block_size": 128})})()
    tok = type("T", (), {"encode": staticmethod(lambda s: s.split())})()
    got = scoring.e2e_on_rows(model, tok, None, rows, n=2)
    assert decoded == [["name[The Mill], eatType[pub] ||", "name[Zizzi], food[Italian] ||"]]
    want = e2e_scores(outputs, [["The Mill is a pub.", "A pub: The Mill."], ["Zizzi serves Italian food."]])
    assert {k: got[k] for k in scoring.E2E_KEYS} == {k: want[v] for k, v in scoring.E2E_KEYS.items()}
    assert got["names"] == 50.0 and got["facts"] == 75.0      # name + eatType; food but not the name
    assert scoring.e2e_on_rows(model, tok, None, rows, n=0) == dict.fromkeys([*scoring.E2E_KEYS, "facts", "names"])


def test_facts_of_prompts_judges_only_the_prompts_that_are_mrs():
    from prefixgpt.facts import facts_of_prompts
    assert facts_of_prompts(["Positive review:", "a film ||"], ["good", "bad"]) is None
    got = facts_of_prompts(["Positive review:", "name[A B], food[Italian] ||"], ["A B serves Italian food.", "x"])
    want = facts_summary(["name[A B], food[Italian] ||"], ["x"], {"A B"})
    assert got == want and got["outputs"] == 1
