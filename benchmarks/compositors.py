"""Stage-2 compositors compared on the synthetic world: recall overall and per kind of edit.

    python benchmarks/compositors.py                                  # all five compositors
    python benchmarks/compositors.py --compositors combiner           # the Combiner alone
    python benchmarks/compositors.py --small                          # a check that it runs, not a comparison
    python benchmarks/compositors.py --compositors combiner,tirg --epochs 50 --train 4000 --pretrain-epochs 2

Why: stage 2 can compose a query from the frozen CLIP's features in several ways (the Combiner,
TIRG, MAAF, CoSMo, LBF: `--compositor NAME` of `stage2/train_combiner.py`). Which one is better
depends on the kind of change a caption asks for, so besides the datasets' own recalls this
reports recall@10 separately for each kind of edit of the synthetic shapes world (colour,
shape, size, add, remove, move), which the world records beside its files
(`clip_cir.data.synthetic.edit_kinds`).

Every compositor is trained by the real program through the Python API
(`clip_cir.train_combiner(..., compositor=NAME)`) with the same data, CLIP, epochs, batch,
learning-rate schedule, loss and seed; `zero-shot sum` (the frozen CLIP's normalised feature sum,
nothing trained) is the baseline row. One frozen tiny CLIP serves every row: random-init
`--model` weights drawn from `--seed`, or that model pretrained contrastively on the world's
per-image titles for `--pretrain-epochs` (as `clip-cir quickstart` does; much slower on a CPU).
Each run validates after every epoch and keeps its best checkpoint; the table scores that
checkpoint, loaded back with `clip_cir.load`, on the val split (CIRR: reference removed and the
image-set recalls Rs@K; FashionIQ: R@10 and R@50 averaged over its three categories, per-edit
recalls pooled over the three categories' queries). Parameters: the compositor's trainable
parameters. s / epoch: median of epochs 2..N (`train_metrics.csv`, validation not included).
Peak memory: of the training loop (epochs and validations), above what it started with (the
CLIP features are already in memory then): `torch.cuda.max_memory_allocated` on a GPU, the peak
resident set on a CPU. Everything goes under a temp dir, removed at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from fixtures import PRETRAIN_RECIPE, load_model
from harness import memory_measure, peak_memory_of, quiet, status, workspace
from options import add_world_args, apply_threads, parse_sized, program_options
from reporting import header, load_average, markdown_table
from timing import Epochs

import clip_cir
from clip_cir.api import CIRModel
from clip_cir.data import load_splits
from clip_cir.data.synthetic import EDIT_KINDS, edit_kinds, generate
from clip_cir.data.types import CIRSplit
from clip_cir.evaluation.evaluate import encode_and_rank
from clip_cir.evaluation.metrics import combine_benchmarks, recall_by_group, split_metrics
from clip_cir.training import loop

COMPOSITORS = ("combiner", "tirg", "maaf", "cosmo", "lbf")
BASELINE = "zero-shot sum"
DATASETS = {"cirr": "CIRR", "fashioniq": "FashionIQ"}
COLUMNS = {
    "cirr": [("recall_at1", "R@1"), ("recall_at5", "R@5"), ("recall_at10", "R@10"), ("recall_at50", "R@50"),
             ("recall_subset_at1", "Rs@1"), ("recall_subset_at2", "Rs@2"), ("recall_subset_at3", "Rs@3")],
    "fashioniq": [("average_recall_at10", "R@10"), ("average_recall_at50", "R@50")],
}
EDIT_K = 10
"""Per-edit columns report recall@EDIT_K."""
SIZES = {
    "full": dict(train=2000, val=500, epochs=30, batch_size=128, pretrain_epochs=3),
    "small": dict(train=300, val=120, epochs=4, batch_size=64, pretrain_epochs=0),
}
"""The default setting, and `--small`'s: a check that everything runs (its recalls, on a random CLIP and 120
queries, say nothing about the compositors)."""
LR = 2e-3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compositors", default=",".join(COMPOSITORS),
                        help="comma-separated compositors to train (default: %(default)s)")
    small = ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in SIZES["small"].items())
    parser.add_argument("--small", action="store_true",
                        help=f"a quick check that everything runs, not a comparison: {small}")
    parser.add_argument("--train", type=int, help="synthetic training queries per dataset (FashionIQ's are split "
                                                  f"over its three categories; default {SIZES['full']['train']})")
    parser.add_argument("--val", type=int, help=f"synthetic val queries per dataset (default {SIZES['full']['val']})")
    parser.add_argument("--epochs", type=int, help=f"epochs per run (default {SIZES['full']['epochs']})")
    parser.add_argument("--batch-size", type=int, help=f"triplets per step (default {SIZES['full']['batch_size']})")
    parser.add_argument("--lr", type=float, default=LR,
                        help="peak learning rate: linear warm-up over the first epoch, then cosine decay "
                             "(default: %(default)s)")
    parser.add_argument("--pretrain-epochs", type=int,
                        help="pretrain the frozen CLIP on the world's image titles for this many epochs first; 0: "
                             f"random init (default {SIZES['full']['pretrain_epochs']})")
    add_world_args(parser)
    args = parse_sized(parser, argv, SIZES)
    args.num_workers = None  # the programs' automatic choice (program_options)
    args.compositors = [name.strip() for name in args.compositors.split(",") if name.strip()]
    unknown = [name for name in args.compositors if name not in COMPOSITORS]
    if unknown or not args.compositors:
        parser.error(f"--compositors: unknown {', '.join(unknown) or 'none given'} "
                     f"(choose from {', '.join(COMPOSITORS)})")
    if (min(args.val, args.epochs, args.lr) <= 0 or args.pretrain_epochs < 0 or args.image_size < 16
            or not 0 < args.batch_size <= args.train):
        parser.error("need --val, --epochs, --lr > 0, --pretrain-epochs >= 0, --image-size >= 16 and "
                     "0 < --batch-size <= --train")
    apply_threads(parser, args.threads)
    return args


def frozen_clip(data_root: Path, root: Path, args: argparse.Namespace) -> str:
    """The CLIP every row uses, as a `pretrained` source: random-init weights saved once (so every
    run loads the same ones), or a pretraining run on the world's image titles."""
    if args.pretrain_epochs == 0:
        clip, _ = load_model(args.model, args.seed)
        path = root / "frozen_clip.pt"
        torch.save(clip.model.state_dict(), path)
        return str(path)
    steps = max(1, len(data_root.joinpath("pretrain_captions.csv").read_text().splitlines()) // 64)
    with quiet():
        run = clip_cir.pretrain(train_data=data_root / "pretrain_captions.csv", model=args.model,
                                epochs=args.pretrain_epochs, warmup=steps, seed=args.seed, num_workers=args.num_workers,
                                output_dir=root / "runs", experiment_name="clip", cache_dir=root / "cache",
                                no_progress=True, **PRETRAIN_RECIPE)
    return str(run.path)


def score_val(model: CIRModel, splits: Sequence[CIRSplit], data_root: Path) -> tuple[dict[str, float], dict]:
    """(the dataset's val metrics, {edit kind: (recall@EDIT_K over its queries, how many)}) of one
    model: rankings by the library's evaluation functions, per-edit recalls pooled over splits."""
    per_split = []
    pooled: dict[str, list[float]] = {}
    for split in splits:
        with quiet():
            ranking = encode_and_rank(model.clip, split, model.combine, model.encode, split.rank_depth)
        per_split.append((split, split_metrics(split, ranking)))
        kinds = edit_kinds(data_root, split)
        for kind, recalls in recall_by_group(split, ranking, kinds, ks=(EDIT_K,)).items():
            count = kinds.count(kind)
            total = pooled.setdefault(kind, [0.0, 0])
            total[0] += recalls[f"recall_at{EDIT_K}"] * count
            total[1] += count
    by_kind = {kind: (hits / count, count) for kind, (hits, count) in pooled.items()}
    return combine_benchmarks(per_split), by_kind


def train_compositor(name: str, dataset: str, data_root: Path, clip_source: str, root: Path, device: torch.device,
                     args: argparse.Namespace) -> dict[str, Any]:
    """One compositor trained by the real program; its best checkpoint scored on val."""
    options = program_options(data_root, root / "cache", root / "runs", f"{dataset}-{name}", args)
    options.update(dataset=dataset, pretrained=clip_source, lr=args.lr, lr_scheduler="cosine",
                   warmup=max(1, args.train // args.batch_size), validation_frequency=1,
                   validation_schedule="every-nth-and-last")
    options["compositor"] = name
    with peak_memory_of(loop, "fit", device) as peaks, quiet():
        run = clip_cir.train_combiner(**options)
    with quiet():
        model = clip_cir.load(run.path, device=device, cache=root / "cache", progress=False)
    parameters = sum(p.numel() for p in model.combine.parameters()) if isinstance(model.combine, torch.nn.Module) else 0
    return {"model": model, "parameters": parameters, "peak": peaks[-1] if peaks else None,
            "epoch_s": Epochs.from_run(run.path, args.batch_size).steady_seconds}


def dataset_rows(dataset: str, data_root: Path, clip_source: str, root: Path, device: torch.device,
                 args: argparse.Namespace) -> tuple[list[list[str]], dict[str, int]]:
    """The table rows of one dataset (the baseline first) and its val queries per edit kind."""
    splits = load_splits(dataset, data_root, "val")
    results: dict[str, dict[str, Any]] = {}
    for name in args.compositors:
        status(f"{DATASETS[dataset]}: training {name} ({args.epochs} epochs) ...")
        results[name] = train_compositor(name, dataset, data_root, clip_source, root, device, args)
    status(f"{DATASETS[dataset]}: scoring on val ...")
    with quiet():
        baseline = clip_cir.load(clip_source, model=args.model, combining="sum", device=device, cache=root / "cache",
                                 progress=False)
    rows, counts = [], {}
    for name, result in [(BASELINE, {"model": baseline, "parameters": 0, "peak": None, "epoch_s": None}),
                         *results.items()]:
        metrics, by_kind = score_val(result["model"], splits, data_root)
        counts = {kind: count for kind, (_, count) in by_kind.items()}
        edits = [f"{by_kind[kind][0]:.1f}" if kind in by_kind else "—" for kind in EDIT_KINDS]
        peak = result["peak"]
        rows.append([name, *(f"{metrics[key]:.1f}" for key, _ in COLUMNS[dataset]), *edits,
                     f"{result['parameters']:,}",
                     "—" if result["epoch_s"] is None else f"{result['epoch_s']:.3f}",
                     "—" if peak is None else f"{peak / 2 ** 20:.1f}"])
    return rows, counts


def table(dataset: str, rows: list[list[str]]) -> str:
    columns = ["compositor", *(label for _, label in COLUMNS[dataset]),
               *(f"R@{EDIT_K} {kind}" for kind in EDIT_KINDS), "parameters", "s / epoch", "peak MiB"]
    return markdown_table(columns, rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(header("clip-cir stage 2: compositors on the synthetic world, recall per kind of edit",
                 sys.argv if argv is None else ["benchmarks/compositors.py", *argv]), flush=True)
    with workspace("clip_cir_bench_compositors_") as root:
        status(f"generating the synthetic world ({args.train} train / {args.val} val queries per dataset) ...")
        data_root = root / "data"
        with quiet():
            generate(data_root, n_train=args.train, n_val=args.val, n_test=0, size=args.image_size, seed=args.seed,
                     progress=False)
        status("the frozen CLIP" + (f": pretraining {args.pretrain_epochs} epochs ..." if args.pretrain_epochs else ""))
        clip_source = frozen_clip(data_root, root, args)
        clip_note = (f"pretrained {args.pretrain_epochs} epochs on the world's image titles" if args.pretrain_epochs
                     else f"random init from seed {args.seed}")
        print(f"data: synthetic shapes world, {args.train:,} train / {args.val:,} val queries per dataset, "
              f"{args.image_size} px; CLIP {args.model} ({clip_note}), frozen; {args.epochs} epochs, batch "
              f"{args.batch_size}, lr {args.lr:g} (warm-up 1 epoch, cosine), seed {args.seed}, device {device}; "
              f"scored: the best checkpoint on val (recalls in %); peak memory: {memory_measure(device)}")
        for dataset, title in DATASETS.items():
            rows, counts = dataset_rows(dataset, data_root, clip_source, root, device, args)
            print(f"\n## {title} layout, val\n")
            print(table(dataset, rows))
            print("\nval queries per edit kind: " + ", ".join(f"{kind} {counts.get(kind, 0)}" for kind in EDIT_KINDS)
                  + ("; per-edit recalls pooled over the three categories" if dataset == "fashioniq" else ""))
        print(f"\nload average (1/5/15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
