"""Keywords of a caption without a language model, for LinCIR's self-masking: each keyword is
replaced by the pseudo-word and the masked caption must encode like the caption.

LinCIR (navervision/lincir, `loader.py` `extract_keywords_spacy`, `CaptionDataset`) tags the
caption with spaCy and takes every maximal run of nouns, proper nouns, adjectives and
determiners as a keyword. We download no tagger; our rule is deterministic:

- the caption is lower-cased and the placeholder removed from it (as LinCIR's `clean_caption`);
  words are runs of letters and digits (with inner apostrophes and hyphens);
- a word in `STOP_WORDS` (a bundled list of English function words: pronouns, prepositions,
  conjunctions, auxiliaries, common adverbs, and the verbs commonest in image captions) ends a
  run, and so does punctuation between two words; every other word is a content word;
- determiners (`DETERMINERS`) join a run as spaCy's DET does in LinCIR ("a red car" is one
  keyword), but a run of determiners alone is no keyword;
- a caption with no keyword has its last word replaced (LinCIR replaces one word drawn at
  random), and one with no word at all becomes "a photo of $" (LinCIR's own fallback).

Verbs outside the list (and nouns inside it, such as "back" or "top") are where this rule
departs from a tagger: it is an approximation of LinCIR's keywords, not a reimplementation.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from clip_cir.models.pseudo_words import DEFAULT_PLACEHOLDER

WORD = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)*")

DETERMINERS = frozenset("a an the this these those some any each every another either neither no".split())

STOP_WORDS = frozenset("""
that i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves one ones what which who whom whose whatever whichever
is am are was were be been being do does did doing done have has had having will would shall should can could
may might must ought
and or but nor so yet for if then than because while whereas although though unless until since as also
of in on at by to from with without within into onto upon off out over under above below between among amongst
through throughout across along around about against toward towards behind beside besides beneath near next
inside outside before after during via per like unlike instead rather
not no nor only just very too quite more most less least much many few several such same other others both all
own there here where when why how now again still even ever never always often sometimes already almost enough
rather really simply instead up down away back
make makes made making get gets got getting give gives gave show shows showing shown change changes changed
changing replace replaced replacing remove removed removing add added adding put puts putting take takes taking
took turn turned turning keep keeps kept keeping wear wears wearing worn hold holds holding held sit sits sitting
sat stand stands standing stood lie lies lying look looks looking looked appear appears appearing seem seems
contain contains containing include includes including feature features featuring use uses using used go goes
going went come comes coming came run runs running walk walks walking play plays playing eat eats eating
""".split()) - DETERMINERS
"""Words that end a keyword: function words and the verbs commonest in (relative) image captions."""


def clean_caption(caption: str, placeholder: str = DEFAULT_PLACEHOLDER) -> str:
    """Lower-cased, the placeholder removed, white space collapsed (LinCIR's `clean_caption`)."""
    return " ".join(caption.lower().replace(placeholder, " ").split())


def keyword_spans(caption: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the keywords of an already clean caption, in order."""
    spans: list[tuple[int, int]] = []
    run: list[re.Match] = []

    def close() -> None:
        if any(m.group() not in DETERMINERS for m in run):
            spans.append((run[0].start(), run[-1].end()))
        run.clear()

    for match in WORD.finditer(caption):
        if match.group() in STOP_WORDS:
            close()
            continue
        if run and caption[run[-1].end():match.start()].strip():  # punctuation between the words
            close()
        run.append(match)
    close()
    return spans


def mask_keywords(caption: str, placeholder: str = DEFAULT_PLACEHOLDER) -> tuple[str, str]:
    """(the clean caption, the clean caption with every keyword replaced by the placeholder,
    spaces either side of it); see the module docstring for the rule and its fallbacks."""
    clean = clean_caption(caption, placeholder)
    spans = keyword_spans(clean)
    if not spans:
        words = list(WORD.finditer(clean))
        if not words:
            return clean, f"a photo of {placeholder}"
        spans = [(words[-1].start(), words[-1].end())]
    pieces, position = [], 0
    for start, end in spans:
        pieces += [clean[position:start], f" {placeholder} "]
        position = end
    pieces.append(clean[position:])
    return clean, " ".join("".join(pieces).split())


def concept_vocabulary(captions: Iterable[str], limit: int | None = None, min_count: int = 1) -> list[str]:
    """Single content words of `captions` (keyword words that are not determiners), most frequent
    first (ties alphabetical): the concept words SEARLE's regulariser and OTI talk about, drawn
    from the training captions instead of Open Images' class names."""
    counts: Counter[str] = Counter()
    for caption in captions:
        clean = clean_caption(caption)
        for start, end in keyword_spans(clean):
            counts.update(w for w in WORD.findall(clean[start:end]) if w not in DETERMINERS and not w.isdigit())
    ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return ranked[:limit] if limit is not None else ranked
