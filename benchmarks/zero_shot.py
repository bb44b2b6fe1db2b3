"""Zero-shot composed retrieval on the synthetic world: what a user gains with no triplets at all.

    python benchmarks/zero_shot.py                      # every row, on a CLIP pretrained on the world's titles
    python benchmarks/zero_shot.py --small              # a check that it runs, not a comparison
    python benchmarks/zero_shot.py --methods pic2word --epochs 20

Why: most users of composed retrieval have photos and perhaps descriptions, but no reference–
caption–target triplets. This prints, on the same synthetic CIRR val split (and CIRCO's, several
ground truths per query) and the same frozen CLIP, the training-free rows (the reference image
alone, the zero-shot sum, Slerp), each pseudo-word method's φ trained by the real program
(`clip_cir.train_zero_shot`: Pic2Word and SEARLE on the training split's images only, LinCIR on
its captions only; no triplet is read), and the supervised two-stage method trained on the
triplets (stage 1 + sum, stage 1 + Combiner) as the ceiling a triplet set buys.

The frozen CLIP is `--model` pretrained contrastively on the world's per-image titles for
`--pretrain-epochs` (as `clip-cir quickstart` does): a random CLIP has no words for φ to aim at.
φ is kept by its best validation score on the CIRR val split; the table scores that φ through
`clip-cir eval` (CIRR: R@K with the reference removed and Rs@K within the image set; CIRCO: mAP@K
over all ground truths). Everything goes under a temp dir, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
from harness import quiet, status, workspace
from options import add_world_args, apply_threads, parse_sized
from reporting import header, load_average, markdown_table

import clip_cir
from clip_cir.apps.cli import main as cli_main
from clip_cir.apps.quickstart import PRETRAIN_RECIPE, STAGE1_RECIPE, STAGE2_RECIPE
from clip_cir.data.synthetic import generate

METHODS = ("pic2word", "searle", "lincir")
SIZES = {
    "full": dict(train=2000, val=500, circo=50, epochs=20, pretrain_epochs=8, stage1_epochs=8, stage2_epochs=30),
    "small": dict(train=200, val=60, circo=10, epochs=2, pretrain_epochs=1, stage1_epochs=1, stage2_epochs=2),
}
"""The default setting, and `--small`'s: a check that every row runs (its numbers say nothing).
The CLIP, stage 1 and the Combiner train with the quickstart's recipes; pretraining runs twice
the quickstart's epochs on half its training queries (about the same number of steps)."""
CIRR_COLUMNS = [("recall_at1", "R@1"), ("recall_at5", "R@5"), ("recall_at10", "R@10"), ("recall_at50", "R@50"),
                ("recall_subset_at1", "Rs@1"), ("recall_avg", "Avg")]
CIRCO_COLUMNS = [("map_at5", "mAP@5"), ("map_at10", "mAP@10"), ("map_at25", "mAP@25")]
SLERP_ALPHAS = (0.5, 0.8)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated φ methods (default: %(default)s)")
    parser.add_argument("--small", action="store_true", help="a quick check that every row runs, not a comparison")
    for key, value in SIZES["full"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"default {value}")
    parser.add_argument("--batch-size", type=int, default=64, help="φ's batch (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="φ's learning rate (default: %(default)s)")
    parser.add_argument("--no-supervised", action="store_true", help="skip the two-stage rows (faster)")
    add_world_args(parser)
    args = parse_sized(parser, argv, SIZES)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m not in METHODS for m in args.methods):
        parser.error(f"--methods: choose from {', '.join(METHODS)}")
    if min(args.train, args.val, args.epochs, args.pretrain_epochs, args.batch_size) <= 0:
        parser.error("sizes, epochs and the batch must be positive")
    apply_threads(parser, args.threads)
    return args


def recipe(settings: dict, args: argparse.Namespace) -> dict:
    """One of the quickstart's recipes, its batch at most the training set; `--small` has too few
    steps for its warm-up."""
    settings = {**settings, "batch_size": min(settings["batch_size"], args.train)}
    return {**settings, "warmup": 0} if args.small else settings


def evaluate(data: Path, root: Path, name: str, dataset: str, options: list[str]) -> dict[str, float]:
    """`clip-cir eval` of one row on the dataset's val split; its metrics."""
    out = root / "eval" / f"{dataset}-{name.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with quiet():
        cli_main(["eval", "--dataset", dataset, "--data-root", str(data), "--output", str(out), "--num-workers", "0",
                  "--cache-dir", str(root / "cache"), *options])
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(header("clip-cir zero-shot: no triplets vs the two-stage method, synthetic world",
                 sys.argv if argv is None else ["benchmarks/zero_shot.py", *argv]), flush=True)
    with workspace("clip_cir_bench_zero_shot_") as root:
        data, runs = root / "data", root / "runs"
        common = dict(num_workers=0, no_progress=True, seed=args.seed, output_dir=runs, cache_dir=root / "cache")
        status(f"synthetic world: {args.train} train / {args.val} val CIRR queries, {args.circo} CIRCO queries ...")
        with quiet():
            generate(data, n_train=args.train, n_val=args.val, n_test=0, size=args.image_size, seed=args.seed,
                     n_circo=args.circo, progress=False)
        status(f"pretraining the CLIP ({args.pretrain_epochs} epochs on the world's titles) ...")
        with quiet():
            clip_run = clip_cir.pretrain(train_data=data / "pretrain_captions.csv", model=args.model,
                                         epochs=args.pretrain_epochs, experiment_name="clip",
                                         **recipe(PRETRAIN_RECIPE, args), **common).path
        clip = ["--pretrained", str(clip_run)]
        rows: dict[str, list[str]] = {"reference image alone": [*clip, "--combining", "image"],
                                      "zero-shot sum": clip}
        for alpha in SLERP_ALPHAS:
            rows[f"Slerp α={alpha}"] = [*clip, "--combining", "slerp", "--slerp-alpha", str(alpha)]
        trained_on = {"pic2word": "train images", "searle": "train images", "lincir": "train captions"}
        for method in args.methods:
            status(f"training φ: {method} on the {trained_on[method]} ({args.epochs} epochs) ...")
            with quiet():
                run = clip_cir.train_zero_shot(method=method, dataset="cirr", data_root=data, pretrained=str(clip_run),
                                               epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                               experiment_name=method, **common).path
            rows[f"{method} φ ({trained_on[method]})"] = [*clip, "--zero-shot", str(run)]
        if not args.no_supervised:
            status("supervised: stage 1 and the Combiner on the triplets ...")
            with quiet():
                stage1 = clip_cir.finetune(dataset="cirr", data_root=data, pretrained=str(clip_run),
                                           epochs=args.stage1_epochs, encoder="text", experiment_name="stage1",
                                           **recipe(STAGE1_RECIPE, args), **common).path
                stage2 = clip_cir.train_combiner(dataset="cirr", data_root=data, pretrained=str(stage1),
                                                 epochs=args.stage2_epochs, experiment_name="stage2",
                                                 **recipe(STAGE2_RECIPE, args), **common).path
            rows["stage 1 + sum (triplets)"] = ["--pretrained", str(stage1)]
            rows["stage 1 + Combiner (triplets)"] = ["--pretrained", str(stage1), "--combiner", str(stage2)]
        status("scoring every row on the val splits ...")
        cirr_rows, circo_rows = [], []
        for name, options in rows.items():
            cirr = evaluate(data, root, name, "cirr", options)
            cirr_rows.append([name, *(f"{cirr[key]:.2f}" for key, _ in CIRR_COLUMNS)])
            if args.circo:
                circo = evaluate(data, root, name, "circo", options)
                circo_rows.append([name, *(f"{circo[key]:.2f}" for key, _ in CIRCO_COLUMNS)])
        print(f"data: synthetic shapes world, {args.train:,} train / {args.val:,} val CIRR queries, {args.circo} "
              f"CIRCO val queries, {args.image_size} px; CLIP {args.model} pretrained {args.pretrain_epochs} epochs "
              f"on the world's titles, frozen for every zero-shot row; φ: {args.epochs} epochs, batch "
              f"{args.batch_size}, lr {args.lr:g}, best on CIRR val; device {device}; in %")
        print("\n## CIRR layout, val\n")
        print(markdown_table(["method", *(label for _, label in CIRR_COLUMNS)], cirr_rows))
        if circo_rows:
            print("\n## CIRCO layout, val (several ground truths per query)\n")
            print(markdown_table(["method", *(label for _, label in CIRCO_COLUMNS)], circo_rows))
        print(f"\nload average (1/5/15 min) at end: {load_average()}")


if __name__ == "__main__":
    main()
