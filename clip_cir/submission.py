"""CIRR test-server submissions: build, check, and score offline against val.

The checks are the server's rules (DESIGN.md §5), applied before anything is written, so a
submission that leaves this module is one the server accepts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from clip_cir.checkpoints import write_text
from clip_cir.data.types import CIRSplit
from clip_cir.errors import CIRError
from clip_cir.metrics import recall_at_k, soft_recall_at_k
from clip_cir.ranking import Ranking

VERSION = "rc2"
RECALL_LENGTH = 50
SUBSET_LENGTH = 3
MAX_BYTES = 5_000_000
"""The server's limit, 5 MB. With 4,148 real test1 queries an indented recall file is ~5.1 MB: we
write JSON without indentation, as the published code does, and also without spaces (~4.2 MB)."""
METRICS = ("recall", "recall_subset")


def build_submissions(split: CIRSplit, ranking: Ranking) -> dict[str, dict[str, Any]]:
    """Both submission dictionaries, keyed by metric name."""
    names = list(split.gallery)
    recall: dict[str, Any] = {"version": VERSION, "metric": "recall"}
    subset: dict[str, Any] = {"version": VERSION, "metric": "recall_subset"}
    for query, top, sub in zip(split.queries, ranking.indices.tolist(), ranking.subset_indices.tolist()):
        recall[query.qid] = [names[i] for i in top[:RECALL_LENGTH]]
        subset[query.qid] = [names[i] for i in sub if i >= 0][:SUBSET_LENGTH]
    return {"recall": recall, "recall_subset": subset}


def check_submission(submission: Any, split: CIRSplit, metric: str | None = None, source: str = "submission") -> str:
    """Raise CIRError naming the first rule broken; return the submission's metric."""
    if not isinstance(submission, dict):
        raise CIRError(f"{source}: a submission is a JSON object")
    if submission.get("version") != VERSION:
        raise CIRError(f"{source}: 'version' must be \"{VERSION}\", got {submission.get('version')!r}")
    found = submission.get("metric")
    if found not in METRICS or (metric is not None and found != metric):
        raise CIRError(f"{source}: 'metric' must be {metric or ' or '.join(METRICS)!r}, got {found!r}")
    queries = {q.qid: q for q in split.queries}
    pairids = [k for k in submission if k not in ("version", "metric")]
    missing = [p for p in queries if p not in submission]
    if missing:
        raise CIRError(f"{source}: {len(missing)} pairids of {split.split} missing (first: {missing[0]})")
    extra = [p for p in pairids if p not in queries]
    if extra:
        raise CIRError(f"{source}: pairid {extra[0]} is not a {split.split} query")
    for pairid in pairids:
        names, query = submission[pairid], queries[pairid]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CIRError(f"{source}: pairid {pairid}: expected a list of image names")
        allowed = [m for m in query.members if m != query.reference] if found == "recall_subset" else None
        expected = min(RECALL_LENGTH, len(split.gallery) - 1) if allowed is None else min(SUBSET_LENGTH, len(allowed))
        if len(names) != expected:
            raise CIRError(f"{source}: pairid {pairid}: {len(names)} names, expected {expected}")
        if len(set(names)) != len(names):
            raise CIRError(f"{source}: pairid {pairid}: names are not unique")
        if query.reference in names:
            raise CIRError(f"{source}: pairid {pairid}: lists its own reference image {query.reference}")
        for name in names:
            if name not in split.gallery:
                raise CIRError(f"{source}: pairid {pairid}: '{name}' is not a {split.split} image")
            if allowed is not None and name not in allowed:
                raise CIRError(f"{source}: pairid {pairid}: '{name}' is not in the query's image set")
    return found


def write_submissions(submissions: dict[str, dict[str, Any]], split: CIRSplit, output_dir: Path, name: str) -> list[Path]:
    """Check both files, then write them (atomically); nothing is written if either is wrong."""
    texts = {}
    for metric, submission in submissions.items():
        check_submission(submission, split, metric)
        texts[metric] = submission_json(submission)
        size = len(texts[metric].encode())
        if size > MAX_BYTES:
            raise CIRError(f"{metric} submission is {size:,} bytes, over the server's limit of {MAX_BYTES:,}")
    paths = []
    for metric, text in texts.items():
        path = Path(output_dir) / f"{metric}_submission_{name}.json"
        write_text(path, text)
        paths.append(path)
    return paths


def submission_json(submission: dict[str, Any]) -> str:
    """Compact JSON (no indentation, no spaces after separators): what the server's size limit needs."""
    return json.dumps(submission, separators=(",", ":"))


def read_submission(path: Path) -> dict[str, Any]:
    """Parse a submission, rejecting duplicate pairids (plain json.load would keep the last)."""
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise CIRError(f"{path}: pairid {key} appears more than once")
            seen[key] = value
        return seen

    if not Path(path).is_file():
        raise CIRError(f"{path}: submission file not found")
    if Path(path).stat().st_size > MAX_BYTES:
        raise CIRError(f"{path}: {Path(path).stat().st_size:,} bytes, larger than the server's limit of "
                       f"{MAX_BYTES:,}")
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise CIRError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise CIRError(f"{path}: not a UTF-8 text file") from None


def score_submission(submission: dict[str, Any], split: CIRSplit, source: str = "submission") -> dict[str, float]:
    """Recalls of a checked submission against the split's ground truth (val only)."""
    metric = check_submission(submission, split, source=source)
    if not split.has_targets:
        raise CIRError(f"{source}: split {split.split} has no ground truth to score against (use val)")
    index = {name: i for i, name in enumerate(split.gallery)}
    lists = [submission[q.qid] for q in split.queries]
    width = max(len(names) for names in lists)
    ranked = torch.tensor([[index[n] for n in names] + [-1] * (width - len(names)) for names in lists])
    targets = torch.tensor([index[q.target] for q in split.queries])
    ks = split.recall_ks if metric == "recall" else split.subset_ks
    scores = {f"{metric}_at{k}": recall_at_k(ranked, targets, k) for k in ks}
    scores.update({f"soft_{metric}_at{k}": soft_recall_at_k(lists, [q.target_soft for q in split.queries], k)
                   for k in ks})
    return scores
