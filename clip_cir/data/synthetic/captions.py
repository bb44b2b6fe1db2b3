"""The shapes world's language: caption templates for every kind of edit, naming an object so that
the caption picks it out of its scene, and whole-scene titles.

Apart from `world.py` (scenes, their edits, drawing them) because wording is a concern of its own:
the layouts and the classic stand-ins word their queries with it. Everything here draws from the
caller's ``random.Random``, so the same seed gives the same captions.
"""

from __future__ import annotations

import random

from clip_cir.data.synthetic.world import POSITIONS, Edit, Obj, Scene

# Placeholders: {ref} a referent ("the red circle"), {new} the new colour / shape,
# {obj} a full new object ("a small green square"), {loc} "at the top left" / "in the center",
# {dest} "to the top left".
TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": (
        "make {ref} {new}",
        "change the colour of {ref} to {new}",
        "{ref} should be {new} instead",
        "turn {ref} {new}",
        "paint {ref} {new}",
        "recolour {ref} {new}",
        "{ref} is {new} now",
        "switch the colour of {ref} to {new}",
    ),
    "shape": (
        "replace {ref} with a {new}",
        "turn {ref} into a {new}",
        "change {ref} into a {new}",
        "{ref} should be a {new} instead",
        "change the shape of {ref} to a {new}",
        "swap {ref} for a {new} of the same colour and size",
        "make {ref} a {new}",
    ),
    "bigger": (
        "make {ref} bigger",
        "enlarge {ref}",
        "{ref} should be large",
        "increase the size of {ref}",
        "make {ref} larger",
        "scale up {ref}",
    ),
    "smaller": (
        "make {ref} smaller",
        "shrink {ref}",
        "{ref} should be small",
        "decrease the size of {ref}",
        "reduce the size of {ref}",
        "scale down {ref}",
    ),
    "add": (
        "add {obj} {loc}",
        "put {obj} {loc}",
        "there should also be {obj} {loc}",
        "insert {obj} {loc}",
        "place {obj} {loc}",
        "{loc}, add {obj}",
        "include {obj} {loc}",
    ),
    "remove": (
        "remove {ref}",
        "delete {ref}",
        "take away {ref}",
        "get rid of {ref}",
        "{ref} should be gone",
        "without {ref}",
        "erase {ref}",
    ),
    "move": (
        "move {ref} {dest}",
        "put {ref} {loc} instead",
        "{ref} should be {loc}",
        "shift {ref} {dest}",
        "relocate {ref} {dest}",
        "place {ref} {loc}",
    ),
}
TITLE_TEMPLATES = (
    "{d}",
    "a picture of {d}",
    "{d} on a {bg} background",
    "an image of {d}",
    "a {bg} background with {d}",
    "a drawing of {d}",
)
POSITIONAL_REFERENT_P = 0.25  # sometimes name an object by position even when not needed
ATTRIBUTE_SETS = ((), ("colour",), ("size",), ("size", "colour"))


def _loc(cell: int) -> str:
    return "in the center" if POSITIONS[cell] == "center" else f"at the {POSITIONS[cell]}"


def _noun(obj: Obj, attrs: tuple[str, ...]) -> str:
    words = [getattr(obj, a) for a in ("size", "colour") if a in attrs]
    return " ".join(words + [obj.shape])


def _full(obj: Obj) -> str:
    return f"a {_noun(obj, ('size', 'colour'))}"


def _referent(rng: random.Random, scene: Scene, obj: Obj) -> str:
    """Name ``obj`` so that it is the only object in ``scene`` matching the description."""
    unique = [
        attrs for attrs in ATTRIBUTE_SETS
        if sum(o.shape == obj.shape and all(getattr(o, a) == getattr(obj, a) for a in attrs)
               for o in scene) == 1
    ]
    if unique and rng.random() >= POSITIONAL_REFERENT_P:
        return "the " + _noun(obj, rng.choice(unique))
    if rng.random() < 0.3:
        return f"the {rng.choice(('object', 'figure'))} {_loc(obj.cell)}"
    return f"the {_noun(obj, rng.choice(ATTRIBUTE_SETS))} {_loc(obj.cell)}"


def _caption(rng: random.Random, scene: Scene, edit: Edit, template: str) -> str:
    """Fill ``template`` for ``edit`` applied to ``scene`` (the reference)."""
    fields = {}
    if edit.before is not None:
        fields["ref"] = _referent(rng, scene, edit.before)
    if edit.after is not None:
        fields["obj"] = _full(edit.after)
        fields["loc"] = _loc(edit.after.cell)
        fields["dest"] = "to the " + POSITIONS[edit.after.cell]
        fields["new"] = edit.after.colour if edit.kind == "colour" else edit.after.shape
    return template.format(**fields)


def cirr_caption(rng: random.Random, scene: Scene, edit: Edit) -> str:
    """One sentence-like caption, as CIRR's single caption per query."""
    text = _caption(rng, scene, edit, rng.choice(TEMPLATES[edit.kind]))
    text = text[0].upper() + text[1:]
    return text + "." if rng.random() < 0.5 else text


def fiq_captions(rng: random.Random, scene: Scene, edit: Edit) -> list[str]:
    """Two different phrasings of one edit, with FashionIQ-like case/punctuation noise."""
    first, second = rng.sample(TEMPLATES[edit.kind], 2)
    captions = []
    for template in (first, second):
        text = _caption(rng, scene, edit, template)
        if rng.random() < 0.3:
            text = text[0].upper() + text[1:]
        if rng.random() < 0.3:
            text += "."
        captions.append(text)
    return captions


def describe_scene(rng: random.Random, scene: Scene, background: str) -> str:
    """Whole-scene description used as a CLIP pretraining title."""
    parts = [f"{_full(o)} {_loc(o.cell)}" for o in rng.sample(scene, len(scene))]
    desc = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return rng.choice(TITLE_TEMPLATES).format(d=desc, bg=background)
