"""Retrieval examples: a few validation queries ranked exactly as evaluation ranks them, drawn
with their top results and their target."""

from __future__ import annotations

import dataclasses
import json
import random
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clip_cir.apps.report.figures import TARGET_COLOR, _new_figure, _save
from clip_cir.apps.report.runs import Run
from clip_cir.errors import CIRError

if TYPE_CHECKING:
    from clip_cir.data import CIRSplit
    from clip_cir.encoding.extraction import FeatureCache
    from clip_cir.models.clip import LoadedCLIP
    from clip_cir.models.combiner import CombiningFunction


TOP_RESULTS = 5
"""Results shown per query in the retrieval figure."""


RANK_DEPTH = 50
"""How deep the target is searched for, to print its rank when it is not in the top 5."""


QUERIES_METADATA_KEY = "clip-cir queries"
"""PNG text chunk of the retrieval figure: JSON list of the query ids shown, one per row."""


@dataclass
class Example:
    """One query of the retrieval figure, with its top results by the run's model."""

    benchmark: str
    qid: str
    caption: str
    reference: Path
    results: list[tuple[str, Path, float]]
    """(name, file, cosine score) of the top results, best first."""
    target: str | None
    target_path: Path | None
    target_rank: int | None
    """1-based rank of the target in the whole ranking, None when beyond `RANK_DEPTH` or unknown."""
    reference_name: str = ""

    @property
    def label(self) -> str:
        """`cirr/24`, `dress/7`: FashionIQ query ids already start with their category."""
        return self.qid if self.qid.startswith(f"{self.benchmark}/") else f"{self.benchmark}/{self.qid}"


def _config_value(run: Run, key: str) -> Any:
    if run.config.get(key) is None:
        raise CIRError(f"{run.path / 'config.json'}: no '{key}' (needed to rebuild the run's retrieval)")
    return run.config[key]


def load_retrieval_model(run: Run) -> tuple[LoadedCLIP, CombiningFunction, str]:
    """(CLIP, combining function, description) exactly as the run's evaluation used them."""
    from clip_cir.models.clip import load_clip
    from clip_cir.models.combiner import element_wise_sum
    from clip_cir.models.compositors.loading import check_compositor_fits, load_compositor

    if run.kind == "stage1":
        clip = load_clip(run.config.get("model"), str(run.path))
        return clip, element_wise_sum, f"{clip.describe()} + element-wise sum"
    combiner = load_compositor(run.path)
    clip = load_clip(run.config.get("model"), _config_value(run, "pretrained"))
    check_compositor_fits(combiner, clip)
    name = "Combiner" if combiner.name == "combiner" else f"{combiner.name} compositor"
    return clip, combiner, f"{name} on {clip.describe()}"


def has_checkpoint(run: Run) -> bool:
    from clip_cir.models.clip import resolve_clip_checkpoint
    from clip_cir.models.compositors.loading import resolve_compositor_checkpoint

    resolve = resolve_compositor_checkpoint if run.kind == "stage2" else resolve_clip_checkpoint
    try:
        resolve(run.path)
        return True
    except CIRError:
        return False


def pick_queries(splits: Sequence[CIRSplit], n: int, seed: int) -> list[CIRSplit]:
    """`n` queries drawn with `seed` across all splits (FashionIQ categories), as sub-splits that
    hold only those queries: encoding then costs the gallery (usually cached) and n captions."""
    pool = [(i, j) for i, split in enumerate(splits) for j in range(len(split.queries))]
    chosen = sorted(random.Random(seed).sample(pool, min(n, len(pool))))
    subsplits = []
    for i, split in enumerate(splits):
        queries = [split.queries[j] for s, j in chosen if s == i]
        if queries:
            subsplits.append(dataclasses.replace(split, queries=queries))
    return subsplits


def retrieval_examples(run: Run, split: str, n_queries: int, seed: int, cache: FeatureCache | None,
                       progress: bool = True) -> tuple[list[Example], str]:
    """Rank `n_queries` queries of `split` with the run's model; returns them and the model's description."""
    import torch

    from clip_cir.data import load_splits
    from clip_cir.data.images import EVALUATION_HINT, ImageCheck
    from clip_cir.encoding.split_features import EncodeOptions
    from clip_cir.evaluation.evaluate import encode_and_rank

    skip = bool(run.config.get("skip_missing_images"))  # as the run itself read the data
    splits = load_splits(_config_value(run, "dataset"), Path(_config_value(run, "data_root")), split,
                         run.config.get("fashioniq_categories"),
                         ImageCheck(skip=skip, readable=skip, hint=EVALUATION_HINT))
    clip, combine, description = load_retrieval_model(run)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clip.model.to(device)
    if hasattr(combine, "to"):
        combine = combine.to(device)
    encode = EncodeOptions(transform=clip.image_transform(run.config.get("transform", "targetpad"),
                                                   float(run.config.get("target_ratio", 1.25))),
                           device=device, image_cache=cache, text_cache=None, progress=progress)
    # text_cache=None: a handful of captions is cheap, and caching each random selection would litter the cache
    examples = []
    for sub in pick_queries(splits, n_queries, seed):
        ranking = encode_and_rank(clip, sub, combine, encode, RANK_DEPTH)
        names = list(sub.gallery)
        for query, top, scores in zip(sub.queries, ranking.indices.tolist(), ranking.scores.tolist()):
            ranked = [names[i] for i in top]
            examples.append(Example(
                benchmark=sub.name, qid=query.qid, caption=query.eval_caption,
                reference=sub.image_file(query.reference),
                results=[(names[i], sub.gallery[names[i]], s) for i, s in zip(top[:TOP_RESULTS], scores)],
                target=query.target, target_path=sub.gallery.get(query.target) if query.target else None,
                target_rank=ranked.index(query.target) + 1 if query.target in ranked else None,
                reference_name=query.reference))
    return examples, description


def _show_image(ax, path: Path, title: str, label: str, framed: bool, title_color: str = "black") -> None:
    """An image with its title above and a small label below; `framed` draws the target's green border."""
    from clip_cir.data.io import load_image

    image = load_image(path).convert("RGB")  # for showing only: imshow would draw palette indices
    ax.imshow(image)
    # Letterbox into a square tile: every tile the same size whatever the image's aspect ratio.
    width, height = image.size
    side = max(width, height)
    ax.set_xlim(-0.5 - (side - width) / 2, width - 0.5 + (side - width) / 2)
    ax.set_ylim(height - 0.5 + (side - height) / 2, -0.5 - (side - height) / 2)
    ax.set_box_aspect(1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9, color=title_color, fontweight="bold" if framed else "normal")
    ax.set_xlabel(label, fontsize=7)
    for spine in ax.spines.values():
        spine.set_edgecolor(TARGET_COLOR if framed else "#bbbbbb")
        spine.set_linewidth(5 if framed else 0.8)


def _short(name: str, width: int = 24) -> str:
    """A gallery name that fits under a tile. A path (a `--dataset triplets` or folder gallery's
    names) keeps its end, the file name and as many folders as fit; other names their start."""
    if len(name) <= width:
        return name
    if "/" not in name:
        return name[:width - 1] + "…"
    parts = name.split("/")
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(tail) > width - 2:
            break
        tail = f"{part}/{tail}"
    return "…/" + tail if len(tail) <= width - 2 else "…" + tail[-(width - 1):]


def _draw_example(subfig, example: Example) -> None:
    # columns: reference | gap | top-5 results | gap | ground-truth target
    ratios = [1, 0.12] + [1] * TOP_RESULTS + [0.12, 1]
    axes = subfig.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
    for gap in (axes[1], axes[TOP_RESULTS + 2]):
        gap.set_axis_off()
    _show_image(axes[0], example.reference, "reference", _short(Path(example.reference).stem), framed=False)
    for rank, (ax, (name, path, score)) in enumerate(zip(axes[2:], example.results), start=1):
        is_target = name == example.target
        # FashionIQ keeps the reference in its own ranking (the protocol): say so when it shows up.
        title = (f"{rank}  (target)" if is_target else f"{rank}  (reference)" if name == example.reference_name
                 else f"{rank}")
        _show_image(ax, path, title, f"{_short(name)}\n{score:.3f}",
                    framed=is_target, title_color=TARGET_COLOR if is_target else "black")
    for ax in axes[2 + len(example.results):TOP_RESULTS + 2]:
        ax.set_axis_off()
    target_ax = axes[-1]
    if example.target_path is None:
        target_ax.set_axis_off()
        target_ax.set_title("target unknown", fontsize=9)
    else:
        where = f"rank {example.target_rank}" if example.target_rank else f"not in top {RANK_DEPTH}"
        _show_image(target_ax, example.target_path, f"target: {where}", _short(example.target), framed=True,
                    title_color=TARGET_COLOR)
    caption = textwrap.shorten(example.caption, 240, placeholder=" …")
    subfig.suptitle(textwrap.fill(f"query {example.label}:  \u201c{caption}\u201d", 120),
                    fontsize=10, ha="left", x=0.01)


def retrieval_figure_size(n_rows: int) -> tuple[float, float]:
    """Inches of the retrieval figure: a title band plus a fixed height per query row."""
    return 13.0, 0.7 + 2.3 * n_rows


def plot_retrieval(examples: Sequence[Example], path: Path, title: str) -> Path:
    """One row per query; the query ids go into the PNG's metadata so tools can tell what is shown."""
    fig = _new_figure(*retrieval_figure_size(len(examples)))
    fig.get_layout_engine().set(h_pad=0.08)  # air between a row's caption and its image titles
    rows = fig.subfigures(len(examples), 1, squeeze=False)[:, 0]
    for subfig, example in zip(rows, examples):
        _draw_example(subfig, example)
    fig.suptitle(title, fontsize=12)
    metadata = {QUERIES_METADATA_KEY: json.dumps([e.label for e in examples])}
    return _save(fig, path, metadata)
