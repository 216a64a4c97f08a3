"""Tests of metrics.py: BLEU against hand-computed and reference-implementation values, and the
classification metrics against numbers worked out by hand."""
import math

import pytest

from prefixgpt.metrics import (accuracy, confusion_matrix, corpus_bleu, format_confusion, group_references, macro_f1,
                     mean_std, tokenize)


@pytest.mark.a8(points=1)
def test_tokenize_splits_punctuation_and_can_lowercase():
    assert tokenize("£20-25, kid-friendly.") == ["£", "20", "-", "25", ",", "kid", "-", "friendly", "."]
    assert tokenize("Café  Rouge's", lowercase=True) == ["café", "rouge", "'", "s"]
    # punctuation glued to a word or not makes no difference to the score
    assert corpus_bleu(["It is in the city centre."], [["It is in the city centre ."]]) == 100.0


@pytest.mark.a8(points=1)
def test_identical_text_scores_100():
    text = ["The Eagle is a coffee shop near Burger King.", "Zizzi is a cheap pub by the riverside."]
    assert corpus_bleu(text, [[t] for t in text]) == 100.0


@pytest.mark.a8(points=1)
def test_no_4gram_match_scores_0():
    # 1-, 2- and 3-grams match (5/6, 3/5, 1/4) but none of the three 4-grams does; without smoothing
    # one zero precision makes the geometric mean 0
    assert corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]]) == 0.0
    assert corpus_bleu(["a b c"], [["a b c"]]) == 0.0  # too short to have any 4-gram at all
    assert corpus_bleu([], []) == 0.0


@pytest.mark.a8(points=2)
def test_hand_computed_two_sentence_corpus():
    # BEGIN ANSWER A8.Q1 (a student copy leaves the working out: course/ANSWERS.md)
    # sentence 1: hyp "the the the cat sat on the mat" (8 tokens), ref "the cat sat on the mat" (6)
    #   1-grams: the x4 clipped to the ref's 2, cat 1, sat 1, on 1, mat 1     -> 6 / 8
    #   2-grams: "the the" x2 -> 0; the cat, cat sat, sat on, on the, the mat -> 5 / 7
    #   3-grams: the cat sat, cat sat on, sat on the, on the mat (not the the the, the the cat) -> 4 / 6
    #   4-grams: the cat sat on, cat sat on the, sat on the mat (of 5)        -> 3 / 5
    # sentence 2: hyp "a dog runs" (3), refs "a dog runs in the big park" (7), "the dog runs very fast now" (6)
    #   1-grams 3 / 3, 2-grams 2 / 2, 3-grams 1 / 1, 4-grams 0 / 0 (too short: adds nothing to either sum)
    #   closest reference length to 3 is 6
    # corpus: p1 = 9/11, p2 = 7/9, p3 = 5/7, p4 = 3/5; product = 3/11
    #   c = 8 + 3 = 11, r = 6 + 6 = 12 -> BP = exp(1 - 12/11) = exp(-1/11)
    #   BLEU = 100 * exp(-1/11) * (3/11) ** (1/4) = 65.98585158...
    # END ANSWER
    # BEGIN ANSWER A8.Q2
    # (sentence 2 alone would score 0, having no 4-gram: BLEU is a corpus statistic, not a mean.)
    # nltk's corpus_bleu gives 63.0457 here: it counts a 4-gram denominator of max(1, 0) = 1 for the
    # short sentence; sacrebleu (tokenize="none", smooth_method="none") gives 65.98585158003581.
    # END ANSWER
    hyps = ["the the the cat sat on the mat", "a dog runs"]
    refs = [["the cat sat on the mat"], ["a dog runs in the big park", "the dog runs very fast now"]]
    expected = 100 * math.exp(-1 / 11) * (3 / 11) ** 0.25
    assert expected == pytest.approx(65.985851580, abs=1e-6)
    assert corpus_bleu(hyps, refs) == pytest.approx(expected, abs=1e-6)


@pytest.mark.a8(points=2)
def test_multi_reference_clips_to_the_best_single_reference():
    # unigrams only: "the" x3 is clipped to 2, the most that any ONE reference has (not 1 + 2 = 3);
    # both references are 3 long, so BP = 1 and BLEU-1 = 2/3
    assert corpus_bleu(["the the the"], [["the cat sat", "the the dog"]], max_n=1) == pytest.approx(200 / 3)
    # a hypothesis equal to any one of its references scores 100
    assert corpus_bleu(["Zizzi is a cheap pub."], [["There is a pub, Zizzi.", "Zizzi is a cheap pub."]]) == 100.0


@pytest.mark.a8(points=1)
def test_brevity_penalty_ties_take_the_shorter_reference():
    # hypothesis 3 long; references 2 and 4 long are equally close -> r = 2, c > r, BP = 1.
    # (taking 4 would give 100 * exp(1 - 4/3) = 71.65)
    assert corpus_bleu(["a b c"], [["a b", "a b c d"]], max_n=1) == 100.0
    # shorter than its only reference: p1 = 1, BP = exp(1 - 4/2)
    assert corpus_bleu(["a b"], [["a b c d"]], max_n=1) == pytest.approx(100 * math.exp(-1))


# Expected values computed by nltk 3.10.4 (nltk.translate.bleu_score.corpus_bleu, default weights, no
# smoothing) and sacrebleu 2.6.0 (BLEU(tokenize="none", smooth_method="none"), ragged reference lists
# padded with None), both on metrics.tokenize() output joined by spaces, in a throwaway venv; the two
# agreed with this implementation to 1e-13.
HYPS = ["The Eagle is a coffee shop near Burger King, with prices of £20-25.",
        "Alimentum serves French food in the city centre; it is not family-friendly.",
        "Zizzi is a cheap pub by the riverside."]
REFS_1 = [["The Eagle is a coffee shop near Burger King. Prices are £20-25."],
          ["Alimentum is in the city centre and serves French food. It is not family-friendly."],
          ["Zizzi is a cheap pub located by the riverside."]]
REFS_2 = [REFS_1[0] + ["Near Burger King, the coffee shop The Eagle has prices of £20-25."],
          REFS_1[1] + ["In the city centre, Alimentum serves French food; it is not family-friendly."],
          REFS_1[2] + ["By the riverside there is a cheap pub, Zizzi."]]


@pytest.mark.a8(points=2)
def test_matches_nltk_and_sacrebleu():
    assert corpus_bleu(HYPS, REFS_1) == pytest.approx(60.712260059518805, abs=1e-6)
    assert corpus_bleu(HYPS, REFS_2) == pytest.approx(76.7315898585069, abs=1e-6)
    # ragged reference lists (3, 1, 2, 2 references) and lowercasing
    hyps = ["the eagle is a coffee shop near Burger King, with prices of £20-25.",
            "Alimentum Serves French food in the city centre; it is not family-friendly.",
            HYPS[2], "Café Rouge is a restaurant."]
    refs = [REFS_2[0] + ["The Eagle coffee shop, near Burger King, costs £20-25."], REFS_1[1], REFS_2[2],
            ["Café Rouge is a highly rated restaurant in the city centre.", "There is a restaurant called Café Rouge."]]
    assert corpus_bleu(hyps, refs, lowercase=True) == pytest.approx(68.29371525599144, abs=1e-6)


def test_group_references_keeps_first_seen_order():
    prompts = ["b ||", "a ||", "b ||", "c ||", "a ||"]
    refs = [" b1", " a1", " b2", " c1", " a2"]
    assert group_references(prompts, refs) == (["b ||", "a ||", "c ||"], [[" b1", " b2"], [" a1", " a2"], [" c1"]])


def test_bleu_input_errors():
    with pytest.raises(ValueError):
        corpus_bleu(["a"], [])
    with pytest.raises(ValueError):
        corpus_bleu(["a b c d"], ["a b c d"])  # a bare string instead of a list of references
    with pytest.raises(ValueError):
        corpus_bleu(["a b c d"], [[]])


# 10 items, 3 classes:      index  0  1  2  3  4  5  6  7  8  9
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]


def test_classification_metrics_by_hand():
    # right at indices 0, 1, 4, 5, 7, 8 -> accuracy 6/10
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.6)
    # rows = true class, columns = predicted class
    #   true 0 -> predicted 0, 0, 1, 2   true 1 -> 1, 1, 0   true 2 -> 2, 2, 1
    assert confusion_matrix(Y_TRUE, Y_PRED, 3) == [[2, 1, 1],
                                                   [1, 2, 0],
                                                   [0, 1, 2]]
    # F1 = 2TP / (2TP + FP + FN); FP = column sum - TP, FN = row sum - TP
    #   class 0: TP 2, FP 1, FN 2 -> 4/7   (P = 2/3, R = 2/4, 2PR/(P+R) = 4/7 too)
    #   class 1: TP 2, FP 2, FN 1 -> 4/7
    #   class 2: TP 2, FP 1, FN 1 -> 4/6
    #   macro = (4/7 + 4/7 + 2/3) / 3 = 38/63 = 0.6031746...
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx(38 / 63)
    assert macro_f1(Y_TRUE, Y_PRED, labels=[0, 1, 2]) == pytest.approx(38 / 63)


def test_macro_f1_edge_cases():
    # class 1 is never predicted: F1 = 0 for it; class 0: TP 1, FP 1, FN 0 -> 2/3; mean 1/3
    assert macro_f1([0, 1], [0, 0]) == pytest.approx(1 / 3)
    # class 2 has no true and no predicted items: left out of the mean instead of counting as 0
    assert macro_f1([0, 0, 1], [0, 0, 1], labels=[0, 1, 2]) == 1.0
    with pytest.raises(ValueError):
        macro_f1([0, 1], [0])
    with pytest.raises(ValueError):
        accuracy([], [])
    with pytest.raises(ValueError):
        confusion_matrix([0, 2], [0, 1], 2)  # label 2 is outside 0..1


def test_format_confusion():
    table = format_confusion([[40, 2], [3, 155]], [" negative", " positive"])
    assert table == ("true \\ pred  negative  positive\n"
                     "negative           40         2\n"
                     "positive            3       155")


def test_mean_std_over_seeds_and_a_single_run_as_a_table_or_bare():
    assert mean_std([1.0, 2.0, 3.0], 1) == "2.0 ± 1.0"                 # the sample std
    assert mean_std([0.5], 2) == "0.50 ± 0.00" and mean_std([0.5], 2, one_bare=True) == "0.50"
    assert mean_std([None, 2.0, 4.0], 0) == "3 ± 1" and mean_std([None]) == "n/a"
