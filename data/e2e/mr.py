"""
data/e2e/mr.py — E2E meaning representations (MRs): read the CSV's form, write the form the model reads,
find the restaurant's name in a prompt. prepare.py and demo.py share it; it knows nothing of tokens,
models or files.

The CSV writes an MR as attribute[value] pairs: "name[Alimentum], area[riverside], familyFriendly[yes]".
The model reads it in one of two forms (MR_FORMATS):
  brackets  "name[Alimentum], area[riverside], familyFriendly[yes]"        the CSV's own (the default)
  spaced    "name : Alimentum | area : riverside | familyFriendly : yes"   Li & Liang's linearisation

What the choice changes: a GPT-2-style tokenizer cuts a word differently after a space and
after a bracket (" Al" "im" "ent" "um" in a sentence, "[" "A" "l" "im" "ent" "um" in the bracketed MR), so in
the bracketed form, writing the restaurant's name into the sentence means mapping one token sequence onto
another; in the spaced form it is a copy of the same tokens. docs/results.md and CHANGELOG.md have the runs.
"""
import re

MR_FORMATS = ("brackets", "spaced")
_PAIR = re.compile(r"([^,\[\]]+)\[([^\]]*)\]")


def mr_fields(mr: str) -> list[tuple[str, str]] | None:
    """The (attribute, value) pairs of an MR in the CSV's form; None if it is not made of such pairs
    (joined again, they must give back the MR, so nothing of it is dropped)."""
    pairs = [(k.strip(), v) for k, v in _PAIR.findall(mr)]
    if not pairs or ", ".join(f"{k}[{v}]" for k, v in pairs) != mr:
        return None
    return pairs


def format_mr(mr: str, mr_format: str) -> str:
    """The MR as the model reads it (module docstring). An MR that is not attribute[value] pairs is kept
    as it is, in either format."""
    if mr_format not in MR_FORMATS:
        raise ValueError(f"mr_format must be one of {', '.join(MR_FORMATS)}, got {mr_format!r}")
    if mr_format == "brackets":
        return mr
    fields = mr_fields(mr)
    return mr if fields is None else " | ".join(f"{k} : {v}" for k, v in fields)


def mr_name(prompt: str) -> str | None:
    """The restaurant's name in an E2E prompt of either format, or None if it names none."""
    m = re.search(r"(?:^|, )name\[([^\]]+)\]", prompt) or re.search(r"(?:^|\| )name : (.+?)(?: \||$)", prompt)
    return m.group(1) if m else None


def prompt_fields(prompt: str) -> list[tuple[str, str]]:
    """The (attribute, value) pairs of an E2E prompt in either format ("<mr> ||"); [] if it holds none."""
    mr = prompt.strip().removesuffix("||").strip()
    if (fields := mr_fields(mr)) is not None:
        return fields
    pairs = [part.split(" : ", 1) for part in mr.split(" | ")]
    return [(k.strip(), v.strip()) for k, v in pairs] if all(len(p) == 2 for p in pairs) and mr else []
