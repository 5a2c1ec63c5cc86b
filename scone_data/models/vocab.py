"""Category vocabularies (COCO, LVIS v1, Objects365) and caption -> label matching for prompts.

The vocabularies ship as data in ``scone_data/data/vocab/{coco,lvis,objects365}.txt``: one category
per line, the canonical name first, synonyms after ``/`` (``"sofa/couch/lounge"``). Labels are the
lower-cased canonical names.

Caption matching is deliberately simple and dependency-free (no POS tagger): the caption is
lower-cased and split into words, and at each word the *longest* vocabulary phrase (canonical name or
synonym, singular or a regular/irregular plural of its last word) that starts there is taken, then
matching resumes after it. So ``"two teddy bears on a dining table"`` gives ``teddy bear`` and
``dining table`` (not ``bear``, not ``table``). Words inside a matched phrase are never matched again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

VOCABULARIES = ("coco", "lvis", "objects365")

# Plurals that the suffix rules below get wrong; only the last word of a phrase is pluralised.
_IRREGULAR = {
    "man": "men", "woman": "women", "person": "people", "child": "children", "mouse": "mice",
    "goose": "geese", "foot": "feet", "tooth": "teeth", "knife": "knives", "leaf": "leaves",
    "shelf": "shelves", "wolf": "wolves", "loaf": "loaves", "calf": "calves", "sheep": "sheep",
    "deer": "deer", "fish": "fish", "glasses": "glasses", "skis": "skis",
}  # fmt: skip
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


@dataclass(frozen=True)
class Category:
    """One vocabulary entry: ``label`` (canonical, lower case) and every name that maps to it."""

    label: str
    names: tuple[str, ...]


def _plurals(word: str) -> set[str]:
    out = {word}
    if word in _IRREGULAR:
        out.add(_IRREGULAR[word])
    elif re.search(r"(s|x|z|ch|sh)$", word):
        out.add(word + "es")
    elif re.search(r"[^aeiou]y$", word):
        out.add(word[:-1] + "ies")
    else:
        out.add(word + "s")
    return out


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (hyphens and apostrophes kept inside words)."""
    return _WORD.findall(text.lower())


@cache
def load_vocabulary(name: str) -> tuple[Category, ...]:
    """The categories of a shipped vocabulary, in file order (COCO 80, LVIS 1203, Objects365 365)."""
    if name not in VOCABULARIES:
        raise KeyError(f"unknown vocabulary {name!r}; known: {', '.join(VOCABULARIES)}")
    text = resources.files("scone_data").joinpath(f"data/vocab/{name}.txt").read_text()
    cats = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [" ".join(words(p)) for p in line.split("/")]
        parts = [p for p in dict.fromkeys(parts) if p]
        cats.append(Category(label=parts[0], names=tuple(parts)))
    return tuple(cats)


class PhraseMatcher:
    """Longest-match of vocabulary phrases in captions (see the module docstring).

    ``categories`` may come from several vocabularies; a name claimed by an earlier category keeps
    that category's label (so ``coco`` before ``lvis`` prefers COCO's labels).
    """

    def __init__(self, categories: list[Category] | tuple[Category, ...]):
        self._table: dict[tuple[str, ...], str] = {}
        for cat in categories:
            for name in cat.names:
                toks = name.split()
                for last in _plurals(toks[-1]):
                    self._table.setdefault((*toks[:-1], last), cat.label)
        self.max_len = max((len(k) for k in self._table), default=0)
        self.labels = tuple(dict.fromkeys(c.label for c in categories))

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...]) -> PhraseMatcher:
        cats: list[Category] = []
        for n in names:
            cats.extend(load_vocabulary(n))
        return cls(cats)

    def match(self, caption: str | None) -> list[str]:
        """Labels found in ``caption``, unique, in order of first appearance; [] for None/empty."""
        if not caption:
            return []
        toks = words(caption)
        found: dict[str, None] = {}
        i = 0
        while i < len(toks):
            for n in range(min(self.max_len, len(toks) - i), 0, -1):
                label = self._table.get(tuple(toks[i : i + n]))
                if label is not None:
                    found.setdefault(label)
                    i += n
                    break
            else:
                i += 1
        return list(found)


@dataclass(frozen=True)
class Prompt:
    """One Grounding DINO caption and where each label's tokens sit in it.

    ``spans[k] = (label, first_token, end_token)``: token indices into the tokenised caption
    ([CLS] is token 0), end exclusive.
    """

    caption: str
    spans: tuple[tuple[str, int, int], ...]


def build_prompts(labels: list[str], tokenizer, max_tokens: int) -> list[Prompt]:
    """Captions ``"dog . red mug ."`` holding ``labels``, chunked to at most ``max_tokens`` tokens each.

    Labels are packed greedily in the given order; each chunk is tokenised once to find the spans.
    A single label longer than a whole chunk is cut to fit (Grounding DINO could not read the rest).
    """
    budget = max_tokens - 2  # [CLS] and [SEP]
    chunks: list[list[str]] = [[]]
    used = 0
    for lab in dict.fromkeys(labels):
        n = len(tokenizer(lab, add_special_tokens=False)["input_ids"]) + 1  # + the " ." separator
        if n > budget:
            ids = tokenizer(lab, add_special_tokens=False)["input_ids"][: budget - 1]
            lab, n = tokenizer.decode(ids), budget
        if used + n > budget and chunks[-1]:
            chunks.append([])
            used = 0
        chunks[-1].append(lab)
        used += n
    prompts = []
    for chunk in chunks:
        if not chunk:
            continue
        caption = " . ".join(chunk) + " ."
        offsets = tokenizer(caption, return_offsets_mapping=True)["offset_mapping"]
        spans, pos = [], 0
        for lab in chunk:
            start, end = caption.index(lab, pos), caption.index(lab, pos) + len(lab)
            pos = end
            toks = [t for t, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
            spans.append((lab, toks[0], toks[-1] + 1))
        prompts.append(Prompt(caption, tuple(spans)))
    return prompts
