"""The shapes world in CFQ's layout (`clip_cir.data.cfq`): queries with graded judgements.

A query is a reference scene and a caption describing one edit; its judged candidates are
renders of the target (the edit applied), of the target with one more edit, of two other single
edits of the reference, of the reference itself and of unrelated scenes. Each candidate is judged
by `JUDGES` judges whose verdicts come from the scenes:

- accurate: "yes" when the candidate satisfies the edit (the edited object as the caption asks,
  the object it replaces gone), else "no";
- similar: by the Jaccard overlap of the candidate's objects with the target's: at least 3/4
  "reasonable", at least 1/4 "somewhat reasonable", else "not reasonable".

Each judge reports that verdict, or with probability `DISAGREE` a neighbouring one (yes / not
sure / no are neighbours in that order), so mean votes take the thirds real judgements do.
Queries are split between a "broad" subset (MAAF's aggregation needs one by that name) and a
"focused" one (our name). Every caption has `PARAPHRASES` rewordings from the other templates of
its edit. Images are JPEG files named by 16-hex-digit hashes. The same arguments give identical files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path

from clip_cir.data.synthetic.captions import TEMPLATES, _caption
from clip_cir.data.synthetic.world import Edit, Scene, _make_group, _plan_image, _random_edit, _random_scene, render

SUBSETS = ("broad", "focused")
JUDGES = 3
DISAGREE = 0.2
PARAPHRASES = 2
UNRELATED = 1
"""Unrelated scenes among each query's candidates."""
BACKGROUND = (235, 235, 235)
ACCURATE = ("No", "Not sure", "Yes")
SIMILAR = ("Not reasonable", "Somewhat reasonable", "Reasonable")
"""Verdicts from worst to best, in the mixed case the reader lower-cases."""


def satisfies(candidate: Scene, edit: Edit) -> bool:
    """Whether a scene shows what the edit asks for: its new object present, the old one gone."""
    return (edit.after is None or edit.after in candidate) and (edit.before is None or edit.before not in candidate)


def similarity_grade(candidate: Scene, target: Scene) -> int:
    """0, 1 or 2 (not / somewhat / reasonable) by the Jaccard overlap of the two scenes' objects."""
    overlap = len(set(candidate) & set(target)) / len(set(candidate) | set(target))
    return 2 if overlap >= 0.75 else 1 if overlap >= 0.25 else 0


def _votes(rng: random.Random, grade: int) -> list[int]:
    """The judges' verdicts (0-2) on one pair whose scene-derived verdict is `grade`."""
    out = []
    for _ in range(JUDGES):
        vote = grade
        if rng.random() < DISAGREE:
            vote = grade + rng.choice((-1, 1)) if grade == 1 else 1
        out.append(vote)
    return out


def _hash(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = f"{rng.getrandbits(64):016x}"
        if name not in taken:
            taken.add(name)
            return name


def _captions(rng: random.Random, reference: Scene, edit: Edit) -> list[str]:
    """The query's caption, then its paraphrases: distinct templates of the edit's kind."""
    out: list[str] = []
    for template in rng.sample(TEMPLATES[edit.kind], len(TEMPLATES[edit.kind])):
        text = _caption(rng, reference, edit, template)
        text = text[0].upper() + text[1:]
        if text not in out:
            out.append(text)
        if len(out) == 1 + PARAPHRASES:
            return out
    raise RuntimeError(f"too few distinct {edit.kind} captions for {PARAPHRASES} paraphrases")


def _other_edit(rng: random.Random, target: Scene, edit: Edit, used: set[Scene]) -> Scene:
    """The target with one more edit that keeps what the caption asks for."""
    for _ in range(200):
        extra = _random_edit(rng, target)
        scene = extra.apply(target)
        if extra.before != edit.after and satisfies(scene, edit) and scene not in used:
            used.add(scene)
            return scene
    raise RuntimeError("shapes world exhausted: no second edit of a target")


def write_cfq(root: str | os.PathLike, seed: int = 0, size: int = 32, n_queries: int = 8) -> dict:
    """Write `n_queries` CFQ queries (split between the two subsets) under `root/cfq/`; returns a
    summary: queries, candidates and judgement lines per subset, images, paraphrases."""
    if n_queries < len(SUBSETS):
        raise ValueError(f"n_queries must be at least {len(SUBSETS)} (one per subset), got {n_queries}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    base = Path(root) / "cfq"
    rng = random.Random(f"{seed}:cfq")
    used: set[Scene] = set()
    taken: set[str] = set()
    jobs = []
    rows: list[list[str]] = []
    paraphrases: dict[str, list[str]] = {}
    summary: dict[str, dict] = {subset: {"queries": 0, "candidates": 0, "lines": 0} for subset in SUBSETS}

    def image(scene: Scene) -> str:
        name = _hash(rng, taken)
        jobs.append(_plan_image(rng, base / "images" / f"{name}.jpeg", scene, BACKGROUND, size))
        return name

    for n in range(n_queries):
        subset = SUBSETS[n * len(SUBSETS) // n_queries]
        group = _make_group(rng, 3, used)
        reference, target, *others = group.scenes
        edit = group.edits[0]
        caption, *rewordings = _captions(rng, reference, edit)
        paraphrases.setdefault(caption, rewordings)
        unrelated = []
        for _ in range(UNRELATED):
            scene = _random_scene(rng)
            while scene in used:
                scene = _random_scene(rng)
            used.add(scene)
            unrelated.append(scene)
        candidates = [target, _other_edit(rng, target, edit, used), *others, reference, *unrelated]
        query_hash = image(reference)
        for scene in candidates:
            name = image(scene)
            accurate = 2 if satisfies(scene, edit) else 0
            similar = similarity_grade(scene, target)
            for a, s in zip(_votes(rng, accurate), _votes(rng, similar)):
                rows.append([subset, query_hash, caption, name, ACCURATE[a], SIMILAR[s]])
        summary[subset]["queries"] += 1
        summary[subset]["candidates"] += len(candidates)
        summary[subset]["lines"] += len(candidates) * JUDGES

    (base / "images").mkdir(parents=True, exist_ok=True)
    for job in jobs:
        render(job).save(job.path, "JPEG", quality=95)
    text = io.StringIO()
    writer = csv.writer(text, delimiter="\t", lineterminator="\n")
    writer.writerow(["subset", "query_hash", "caption", "catalog_hash", "accurate", "similar"])
    writer.writerows(rows)
    (base / "judgments.tsv").write_text(text.getvalue(), encoding="utf-8")
    (base / "equivalent_captions.json").write_text(json.dumps(paraphrases, indent=2) + "\n", encoding="utf-8")
    return {"root": str(root), "subsets": summary, "images": len(jobs), "paraphrased_captions": len(paraphrases)}
