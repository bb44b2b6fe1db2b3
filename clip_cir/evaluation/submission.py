"""Test-server submissions (CIRR and CIRCO): build, check, and score offline against val.

The checks are the servers' rules (docs/datasets.md, "CIRR test-server submission" and CIRCO's
"Submission"), applied before anything is written, so a submission that leaves this module is one
the server accepts. Both servers take, per query id, a ranked list of gallery images (CIRR:
names, plus a version/metric header and a subset file; CIRCO: integer COCO ids); what the two
share (every query exactly once, lists of the right length without repeats, only gallery images,
duplicate keys rejected on reading) is one code path here. Offline scores come from the same
metric functions as `clip-cir eval`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Container, Mapping, Sequence

import torch

from clip_cir.data.types import CIRSplit
from clip_cir.encoding.ranking import Ranking
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import recall_at_k, soft_recall_at_k, split_metrics
from clip_cir.models.files import write_text

VERSION = "rc2"
RECALL_LENGTH = 50
SUBSET_LENGTH = 3
MAX_BYTES = 5_000_000
"""The server's limit, 5 MB. With 4,148 real test1 queries an indented recall file is ~5.1 MB: we
write JSON without indentation, as the published code does, and also without spaces (~4.2 MB)."""
METRICS = ("recall", "recall_subset")
CIRCO_LENGTH = 50
"""CIRCO's server takes each query's top 50 gallery image ids."""


# ----------------------------------------------------------------------------- shared rules


def check_query_keys(keys: Sequence[str], split: CIRSplit, source: str, word: str) -> None:
    """Every query of the split present, nothing else (`word` is what the benchmark calls a query id)."""
    present = set(keys)
    missing = [q.qid for q in split.queries if q.qid not in present]
    if missing:
        raise CIRError(f"{source}: {len(missing)} {word}s of {split.split} missing (first: {missing[0]})")
    known = {q.qid for q in split.queries}
    extra = [key for key in keys if key not in known]
    if extra:
        raise CIRError(f"{source}: {word} {extra[0]} is not a {split.split} query")


def check_ranked_list(values: Any, expected: int, where: str, kind: str, is_item: Callable[[Any], bool],
                      gallery: Container, split_name: str) -> list:
    """One query's list: a JSON list of `kind` (e.g. "image names"), `expected` long, no repeats,
    every item in `gallery`. `where` starts the message ("FILE: pairid 7")."""
    if not isinstance(values, list) or not all(is_item(v) for v in values):
        raise CIRError(f"{where}: expected a list of {kind}")
    if len(values) != expected:
        raise CIRError(f"{where}: {len(values)} {kind.split()[-1]}, expected {expected}")
    if len(set(values)) != len(values):
        raise CIRError(f"{where}: {kind.split()[-1]} are not unique")
    for value in values:
        if value not in gallery:
            raise CIRError(f"{where}: {value!r} is not a {split_name} image")
    return values


def _is_name(value: Any) -> bool:
    return isinstance(value, str)


def _is_int_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- CIRR


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
    check_query_keys(pairids, split, source, "pairid")
    for pairid in pairids:
        query = queries[pairid]
        allowed = [m for m in query.members if m != query.reference] if found == "recall_subset" else None
        expected = min(RECALL_LENGTH, len(split.gallery) - 1) if allowed is None else min(SUBSET_LENGTH, len(allowed))
        where = f"{source}: pairid {pairid}"
        names = check_ranked_list(submission[pairid], expected, where, "image names", _is_name, split.gallery,
                                  split.split)
        if query.reference in names:
            raise CIRError(f"{where}: lists its own reference image {query.reference}")
        outside = [n for n in names if allowed is not None and n not in allowed]
        if outside:
            raise CIRError(f"{where}: '{outside[0]}' is not in the query's image set")
    return found


def write_submissions(submissions: dict[str, dict[str, Any]], split: CIRSplit, output_dir: Path,
                      name: str) -> list[Path]:
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


def read_submission(path: Path, word: str = "pairid", max_bytes: int | None = MAX_BYTES) -> dict[str, Any]:
    """Parse a submission, rejecting duplicate query ids (plain json.load would keep the last).
    `word` is what the benchmark calls a query id; `max_bytes` its server's size limit, if any."""
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise CIRError(f"{path}: {word} {key} appears more than once")
            seen[key] = value
        return seen

    if not Path(path).is_file():
        raise CIRError(f"{path}: submission file not found")
    if max_bytes is not None and Path(path).stat().st_size > max_bytes:
        raise CIRError(f"{path}: {Path(path).stat().st_size:,} bytes, larger than the server's limit of "
                       f"{max_bytes:,}")
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


# ----------------------------------------------------------------------------- CIRCO


def _id_to_name(split: CIRSplit) -> dict[int, str]:
    if split.image_ids is None:
        raise CIRError(f"{split.dataset} has no integer image ids: it is not submitted by id")
    return {image_id: name for name, image_id in split.image_ids.items()}


def build_circo_submission(split: CIRSplit, ranking: Ranking) -> dict[str, list[int]]:
    """{query id: its top 50 gallery image ids}, in the split's query order (the server's format)."""
    names = list(split.gallery)
    return {query.qid: [split.image_ids[names[i]] for i in row[:CIRCO_LENGTH] if i >= 0]
            for query, row in zip(split.queries, ranking.indices.tolist())}


def check_circo_submission(submission: Any, split: CIRSplit, source: str = "submission") -> None:
    """Raise CIRError naming the first rule broken: a JSON object with every query id of the split
    exactly once, each mapped to min(50, gallery size) distinct integer ids of gallery images."""
    if not isinstance(submission, dict):
        raise CIRError(f"{source}: a submission is a JSON object")
    check_query_keys(list(submission), split, source, "query id")
    known = _id_to_name(split)
    expected = min(CIRCO_LENGTH, len(split.gallery))
    for qid, values in submission.items():
        check_ranked_list(values, expected, f"{source}: query id {qid}", "integer image ids", _is_int_id, known,
                          split.split)


def write_circo_submission(submission: dict[str, list[int]], split: CIRSplit, path: Path) -> Path:
    """Check, then write compact JSON atomically: nothing is written if a rule is broken."""
    check_circo_submission(submission, split)
    write_text(path, submission_json(submission))
    return Path(path)


def submission_ranking(submission: Mapping[str, Sequence[int]], split: CIRSplit) -> Ranking:
    """A checked CIRCO submission as the Ranking `clip-cir eval` would have scored (gallery indices,
    best first); scores are unknown (zero)."""
    known = _id_to_name(split)
    index = {name: i for i, name in enumerate(split.gallery)}
    rows = [[index[known[image_id]] for image_id in submission[q.qid]] for q in split.queries]
    indices = torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1)
    return Ranking(indices=indices, scores=torch.zeros(indices.shape))


def score_circo_submission(submission: Any, split: CIRSplit, source: str = "submission") -> dict[str, float]:
    """mAP@K, Recall@K (and per-aspect mAP@10) of a CIRCO submission against val ground truth,
    through the same `metrics.split_metrics` as `clip-cir eval`."""
    check_circo_submission(submission, split, source)
    if not split.has_targets:
        raise CIRError(f"{source}: split {split.split} has no ground truth to score against (use val)")
    return split_metrics(split, submission_ranking(submission, split))
