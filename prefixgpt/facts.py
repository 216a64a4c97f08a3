"""
Facts carried: which of an E2E input's attributes a generated sentence states, states wrongly, or adds.

BLEU rewards a fluent sentence that shares words with the references; a model that writes one template
whatever it is asked ("X is a coffee shop in the city centre") scores well on it and has not read its
input. This check reads the output against the MR, attribute by attribute, in the spirit of the slot
error rate of the E2E challenge's analysis (Dušek et al., 2020) and of its cleaned release:

    from prefixgpt.facts import check_facts, facts_summary
    check_facts("name[Zizzi], eatType[pub], food[Chinese]", "Zizzi is a pub serving Italian food.")
    # {'stated': ['name', 'eatType'], 'missing': [], 'wrong': ['food'], 'added': []}

How each attribute is judged (case-insensitive, on whole words):
  name, near          the value itself, exactly as written ("The Golden Curry")
  eatType, food, area the value ("coffee shop", "Chinese", "riverside"), or one of a few spellings
                      (FOOD_SPELLINGS: "fast-food"; "center" for "city centre")
  familyFriendly      yes: "family friendly", "kid-friendly", "children are welcome", "for families", ...
                      no: the same words negated ("not family-friendly", "no children", "adults only")
  priceRange          the value or a paraphrase (PRICES: "cheap" ~ "inexpensive", "less than £20" ~ "under £20")
  customer rating     the value or a paraphrase (RATINGS: "5 out of 5" ~ "five stars"; "high" ~ "highly rated")

  stated   the MR's value is there
  wrong    another value of the same attribute is there instead (a Chinese place called Italian; a
           family-friendly place said to be for adults; another restaurant's name from `known_names`)
  missing  neither
  added    an attribute the MR does not have is stated (food for an MR without food): an invented fact

Only what a string match can judge is judged: "a place to eat" for a restaurant, or a rating said in a
way no list foresaw, counts as missing. The check is a lower bound on what a sentence states, not a
reader; the human references, checked the same way, state about 9 in 10 of their MRs' attributes.
"""
import re
from collections import Counter

from data.e2e.mr import prompt_fields

# the closed attributes' values, and how else a sentence may write them
EAT_TYPES = {"coffee shop": [r"coffee ?shops?", r"caf[eé]s?"], "pub": [r"pubs?"], "restaurant": [r"restaurants?"]}
FOOD_SPELLINGS = {"fast food": [r"fast[- ]food"], "english": [r"english", r"british"]}
AREAS = {"city centre": [r"city cent(?:re|er)", r"centre of the city", r"center of the city", r"cent(?:re|er)"],
         "riverside": [r"riverside", r"river ?side", r"by the river", r"near the river", r"on the river"]}
FAMILY_YES = r"(?:family|kid|kids|child|children)[- ]friendly|(?:families|children|kids) (?:are )?welcome|" \
             r"for (?:the )?(?:whole )?famil(?:y|ies)|good for (?:kids|children|families)|allows? (?:kids|children)|" \
             r"(?:families|children|kids)"
FAMILY_NO = r"(?:not|isn't|is not|non|un)[- ]?(?:\w+ ){0,2}(?:family|kid|kids|child|children)[- ]?friendly|" \
            r"(?:no|not for|not suitable for|isn't suitable for|unsuitable for) (?:kids|children|families)|" \
            r"adults? only|adult[- ]only|not child|not kid|not family|isn't family|isn't kid|isn't child"
PRICES = {"cheap": [r"cheap\w*", r"inexpensive", r"low[- ]pric\w*", r"low[- ]cost", r"affordabl\w*", r"budget"],
          "moderate": [r"moderat\w*", r"average[- ]pric\w*", r"mid[- ]?(?:range|priced)", r"reasonabl\w*"],
          "high": [r"expensive", r"high[- ]pric\w*", r"high[- ]end", r"pricey", r"upscale", r"costly"],
          "less than £20": [r"(?:less than|under|below|lower than) £ ?20", r"cheap\w*", r"inexpensive", r"low[- ]pric\w*"],
          "£20-25": [r"£ ?20 ?(?:-|to|–) ?(?:£ ?)?25", r"moderat\w*", r"average[- ]pric\w*", r"mid[- ]?(?:range|priced)"],
          "more than £30": [r"(?:more than|over|above|higher than) £ ?30", r"expensive", r"high[- ]pric\w*"]}
RATINGS = {"1 out of 5": [r"1 out of 5", r"one out of five", r"(?:1|one)[- ]stars?", r"low(?:ly)?[- ]rat\w*",
                          r"low customer rating", r"poor(?:ly)? rat\w*", r"low rating"],
           "3 out of 5": [r"3 out of 5", r"three out of five", r"(?:3|three)[- ]stars?", r"average[- ]rat\w*",
                          r"average customer rating", r"average rating"],
           "5 out of 5": [r"5 out of 5", r"five out of five", r"(?:5|five)[- ]stars?", r"high(?:ly)?[- ]rat\w*",
                          r"high customer rating", r"high rating"],
           "low": [r"low(?:ly)?[- ]rat\w*", r"low customer rating", r"poor(?:ly)? rat\w*", r"low rating", r"rated low"],
           "average": [r"average[- ]rat\w*", r"average customer rating", r"average rating", r"rated average"],
           "high": [r"high(?:ly)?[- ]rat\w*", r"high customer rating", r"high rating", r"rated high", r"well[- ]rated"]}
FOODS = ["chinese", "english", "fast food", "french", "indian", "italian", "japanese"]
ATTRIBUTES = ("name", "near", "eatType", "food", "area", "familyFriendly", "priceRange", "customer rating")


def _says(text: str, patterns: list[str]) -> bool:
    """Whether text holds one of the patterns as whole words (text is lowercased; patterns are regexes)."""
    return any(re.search(rf"(?<![\w£]){p}(?!\w)", text) for p in patterns)


def _closed(value: str, text: str, table: dict[str, list[str]] | list[str]) -> tuple[bool, bool]:
    """(stated, wrong) for an attribute with a closed set of values: stated if the value (or one of its
    spellings) is there, wrong if not and another value of the attribute is."""
    options = table if isinstance(table, dict) else {v: [re.escape(v)] for v in table}
    spell = lambda v: options.get(v, []) + [re.escape(v)] + FOOD_SPELLINGS.get(v, [])  # noqa: E731
    value = value.lower()
    if _says(text, spell(value)):
        return True, False
    mine = set(spell(value))   # another value's paraphrase that is also this one's ("cheap") is not wrong
    return False, any(_says(text, [p for p in spell(other) if p not in mine]) for other in options if other != value)


def _family(value: str, text: str) -> tuple[bool, bool]:
    no, yes = bool(re.search(FAMILY_NO, text)), bool(re.search(rf"(?<!\w)(?:{FAMILY_YES})(?!\w)", text))
    said_yes = yes and not no
    return (said_yes, no) if value.lower() == "yes" else (no, said_yes)


def _stated_anywhere(attribute: str, text: str) -> bool:
    """Whether text states some value of an attribute (to find facts the MR does not have)."""
    if attribute == "food":
        return _says(text, [re.escape(f) for f in FOODS] + FOOD_SPELLINGS["fast food"])
    if attribute == "area":
        return _says(text, [p for ps in AREAS.values() for p in ps])
    if attribute == "familyFriendly":
        return bool(re.search(FAMILY_NO, text) or re.search(rf"(?<!\w)(?:{FAMILY_YES})(?!\w)", text))
    if attribute == "priceRange":
        return _says(text, [p for ps in PRICES.values() for p in ps])
    if attribute == "customer rating":
        return _says(text, [p for ps in RATINGS.values() for p in ps])
    return False   # eatType is in nearly every sentence; name and near are not judged when absent


def check_facts(mr: str, output: str, known_names: set[str] = frozenset()) -> dict[str, list[str]]:
    """Which of the MR's attributes `output` states, states wrongly, misses, and which it adds (module
    docstring). `known_names`: names of other places (name or near values seen anywhere); an output that
    names one of them instead of the MR's is wrong, not just missing. `mr` may be a prompt in either MR
    format (data/e2e/mr.py); one that is not made of attributes has nothing to check (all lists empty)."""
    fields = prompt_fields(mr)
    text = " ".join(output.lower().split())
    mine = {v.lower() for k, v in fields if k in ("name", "near")}
    # the other attributes are judged with every name blanked out: "Raja Indian Cuisine" serves no food
    rest = text
    for n in sorted(mine | {n.lower() for n in known_names}, key=len, reverse=True):
        rest = re.sub(rf"(?<!\w){re.escape(n)}(?!\w)", " <name> ", rest)
    closed = {"eatType": EAT_TYPES, "food": FOODS, "area": AREAS, "priceRange": PRICES, "customer rating": RATINGS}
    result = {"stated": [], "missing": [], "wrong": [], "added": []}
    for attribute, value in fields:
        if attribute in ("name", "near"):
            stated = _says(text, [re.escape(value.lower())])
            wrong = not stated and attribute == "name" and any(
                _says(text, [re.escape(n.lower())]) for n in known_names if n.lower() not in mine)
        elif attribute == "familyFriendly":
            stated, wrong = _family(value, rest)
        elif attribute in closed:
            stated, wrong = _closed(value, rest, closed[attribute])
        else:
            continue   # an attribute E2E does not have: not judged
        result["stated" if stated else "wrong" if wrong else "missing"].append(attribute)
    have = {k for k, _ in fields}
    result["added"] = [a for a in ATTRIBUTES if a not in have and _stated_anywhere(a, rest)]
    return result


def facts_summary(mrs: list[str], outputs: list[str], known_names: set[str] = frozenset()) -> dict[str, float]:
    """Over a set of outputs, in %: facts carried (stated / the MRs' judged attributes), names (outputs
    that state the MR's name), wrong (stated wrongly / attributes), added (invented facts per output),
    and by_attribute: for each attribute the MRs hold, the share of them stated (name and near are the
    two an output can only copy; the rest come from a closed set of values)."""
    if len(mrs) != len(outputs):
        raise ValueError(f"{len(mrs)} MRs but {len(outputs)} outputs")
    names = named = wrong = added = 0
    judged_by, stated_by = Counter(), Counter()     # per attribute: how often an MR holds it, and it is stated
    for mr, out in zip(mrs, outputs):
        r = check_facts(mr, out, known_names)
        judged_by.update(r["stated"] + r["missing"] + r["wrong"])
        stated_by.update(r["stated"])
        wrong, added = wrong + len(r["wrong"]), added + len(r["added"])
        if any(k == "name" for k, _ in prompt_fields(mr)):
            names, named = names + 1, named + ("name" in r["stated"])
    stated, total = sum(stated_by.values()), sum(judged_by.values())
    pct = lambda a, b: 100 * a / b if b else 0.0  # noqa: E731
    return {"facts": pct(stated, total), "names": pct(named, names), "wrong": pct(wrong, total),
            "added": pct(added, len(mrs)), "outputs": len(mrs),
            "by_attribute": {k: pct(stated_by[k], n) for k, n in judged_by.most_common()}}


def facts_of_prompts(prompts: list[str], outputs: list[str]) -> dict | None:
    """facts_summary over the prompts that are E2E MRs and their outputs, the names any of those MRs holds
    counting as another place's; None when no prompt is an MR."""
    pairs = [(p, o) for p, o in zip(prompts, outputs) if prompt_fields(p)]
    if not pairs:
        return None
    mrs = [p for p, _ in pairs]
    return facts_summary(mrs, [o for _, o in pairs], known_names_of(mrs))


def known_names_of(mrs: list[str]) -> set[str]:
    """Every name and near value in a list of MRs (the places an output may confuse with its own)."""
    return {v for mr in mrs for k, v in (prompt_fields(mr)) if k in ("name", "near")}
