"""`clip-cir`: data, evaluation, submissions and tools around the two training stages."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from clip_cir import params as opt
from clip_cir.apps.prepare import add_combining_args, prepare
from clip_cir.errors import CIRError

log = logging.getLogger("clip_cir")


def cmd_eval(args: argparse.Namespace) -> None:
    from clip_cir.evaluation.evaluate import evaluate
    from clip_cir.evaluation.metrics import format_metrics
    from clip_cir.models.checkpoints import write_json

    index_factory = opt.search_index_factory(args)
    splits, clip, combine, encode = prepare(args, need_targets=True)
    metrics = evaluate(clip, splits, combine, encode, index_factory)
    print(format_metrics(metrics, label=args.dataset))
    if args.output:
        extra = {"skipped_images": args.skipped_images, "comparable_with_published": False} if args.skipped_images else {}
        write_json(args.output, {**{k: round(v, 4) for k, v in metrics.items()}, **extra})
        log.info("metrics written to %s", args.output)


def cmd_rank(args: argparse.Namespace) -> None:
    from clip_cir.encoding.encode import split_features
    from clip_cir.evaluation.evaluate import rank_features
    from clip_cir.models.checkpoints import write_json

    opt.check_positive(args, ["top_k"])
    index_factory = opt.search_index_factory(args)
    splits, clip, combine, encode = prepare(args)
    queries = []
    for split in splits:
        ranking = rank_features(split_features(clip, split, encode), combine, k=args.top_k,
                                index_factory=index_factory)
        names = list(split.gallery)
        for query, top, scores in zip(split.queries, ranking.indices.tolist(), ranking.scores.tolist()):
            queries.append({"qid": query.qid, "benchmark": split.name, "reference": query.reference,
                            "caption": query.eval_caption, "target": query.target,
                            "ranking": [{"name": names[i], "score": round(s, 6)} for i, s in zip(top, scores)]})
    write_json(args.output, {"dataset": args.dataset, "split": args.split, "model": clip.describe(),
                             "combining": "combiner" if args.combiner else args.combining, "top_k": args.top_k,
                             "queries": queries})
    print(f"rankings of {len(queries)} queries written to {args.output}")


def _submission_ranking(args: argparse.Namespace, dataset: str, test_split: str, k: int):
    """What submit-cirr and submit-circo share: check the split, then data, model and the top-k
    ranking of every query (reference removed or not as the dataset's protocol says)."""
    from clip_cir.encoding.encode import split_features
    from clip_cir.evaluation.evaluate import rank_features

    if args.split not in (test_split, "val"):
        raise CIRError(f"--split must be {test_split} or val for a {dataset.upper()} submission, got '{args.split}'")
    args.dataset = dataset
    index_factory = opt.search_index_factory(args)
    splits, clip, combine, encode = prepare(args)
    split = splits[0]
    return split, rank_features(split_features(clip, split, encode), combine, k=k, index_factory=index_factory)


def _score_file(args: argparse.Namespace, dataset: str, score) -> None:
    """What score-cirr and score-circo share: `score(split)` against the split's ground truth,
    printed as a table and optionally written as JSON."""
    from clip_cir.data import load_splits
    from clip_cir.data.images import ImageCheck
    from clip_cir.evaluation.metrics import format_metrics

    # Scoring reads annotations only: the images need not be on disk.
    scores = score(load_splits(dataset, args.data_root, args.split, images=ImageCheck(require_files=False))[0])
    print(format_metrics(scores, label=dataset))
    if args.output:
        from clip_cir.models.checkpoints import write_json
        write_json(args.output, {k: round(v, 4) for k, v in scores.items()})


def cmd_submit_cirr(args: argparse.Namespace) -> None:
    from clip_cir.evaluation.submission import (
        RECALL_LENGTH,
        build_submissions,
        write_submissions,
    )

    split, ranking = _submission_ranking(args, "cirr", "test1", RECALL_LENGTH)
    for path in write_submissions(build_submissions(split, ranking), split, args.output_dir, args.name):
        print(path)


def cmd_score_cirr(args: argparse.Namespace) -> None:
    from clip_cir.evaluation.submission import read_submission, score_submission

    _score_file(args, "cirr", lambda split: score_submission(read_submission(args.submission), split,
                                                             source=str(args.submission)))


def cmd_submit_circo(args: argparse.Namespace) -> None:
    from clip_cir.evaluation.submission import (
        CIRCO_LENGTH,
        build_circo_submission,
        write_circo_submission,
    )

    split, ranking = _submission_ranking(args, "circo", "test", CIRCO_LENGTH)
    path = Path(args.output_dir) / f"circo_{split.split}_submission_{args.name}.json"
    print(write_circo_submission(build_circo_submission(split, ranking), split, path))


def cmd_score_circo(args: argparse.Namespace) -> None:
    from clip_cir.evaluation.submission import read_submission, score_circo_submission

    _score_file(args, "circo", lambda split: score_circo_submission(
        read_submission(args.submission, word="query id", max_bytes=None), split, source=str(args.submission)))


def cmd_export(args: argparse.Namespace) -> None:
    from clip_cir.apps.export import export_model

    if not args.pretrained:
        raise CIRError("--pretrained is required: the CLIP to export (a run directory, checkpoint file, "
                       "tag with --model, or hf-hub:ORG/NAME)")
    folder = export_model(args.pretrained, args.output_dir, combiner_source=args.combiner, model_name=args.model,
                          push_to_hub=args.push_to_hub, private=args.private, license_name=args.license,
                          overwrite=args.overwrite)
    print(folder)


def cmd_synth(args: argparse.Namespace) -> None:
    from clip_cir.data import synthetic

    opt.check_positive(args, ["train", "val", "test", "size"])
    try:
        summary = synthetic.generate(args.root, n_train=args.train, n_val=args.val, n_test=args.test,
                                 size=args.size, seed=args.seed, overwrite=args.overwrite, n_circo=args.circo,
                                 circo_distractors=args.circo_distractors)
    except ValueError as e:
        raise CIRError(str(e)) from None
    print(json.dumps(summary, indent=2, default=str))


def cmd_report(args: argparse.Namespace) -> None:
    from clip_cir.apps.report import run_report

    run_report(args)


def cmd_demo(args: argparse.Namespace) -> None:
    from clip_cir.apps.demo.app import run_demo

    run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clip-cir", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic shapes dataset in the CIRR, FashionIQ and CIRCO layouts",
                       description="Render a deterministic 2-D shapes world (CSS-like) and write it in the three "
                                   "published layouts, plus per-image captions for pretraining.")
    p.add_argument("--root", type=Path, required=True, help="output folder (becomes a --data-root)")
    p.add_argument("--train", type=int, default=3000, help="training queries (default: %(default)s)")
    p.add_argument("--val", type=int, default=600, help="validation queries (default: %(default)s)")
    p.add_argument("--test", type=int, default=600, help="test queries (default: %(default)s)")
    p.add_argument("--circo", type=int, default=100,
                   help="CIRCO queries in each of val and test, with 1-8 ground truths each; 0 writes no CIRCO "
                        "folder (default: %(default)s)")
    p.add_argument("--circo-distractors", type=int, default=None,
                   help="unrelated scenes added to the CIRCO gallery (default: 5 per CIRCO query)")
    p.add_argument("--size", type=int, default=64, help="short image side in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset under --root")
    p.set_defaults(func=cmd_synth)

    for name, (_, help_text) in TRAINING_PROGRAMS.items():
        sub.add_parser(name, help=help_text, add_help=False)  # listed here; dispatched in main()

    p = sub.add_parser("eval", help="validation recalls of a CLIP (+ Combiner)",
                       description="Rank each query's whole split gallery and report the method's recalls "
                                   "(CIRR: R@1/5/10/50, Recall_subset@1/2/3, plus soft-credit; FashionIQ: "
                                   "R@10/50 per category and averages; CIRCO: mAP@5/10/25/50, R@5/10/25/50 and "
                                   "mAP@10 per semantic aspect).")
    opt.add_data_args(p)
    opt.add_model_args(p)
    add_combining_args(p)
    opt.add_encode_args(p)
    opt.add_skip_missing_arg(p, training=False)
    opt.add_search_args(p.add_argument_group("search"))
    p.add_argument("--output", type=Path, help="write the metrics as JSON here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("rank", help="write each query's top-K gallery images (any split, test included)")
    opt.add_data_args(p)
    opt.add_model_args(p)
    add_combining_args(p)
    opt.add_encode_args(p)
    opt.add_skip_missing_arg(p, training=False)
    opt.add_search_args(p.add_argument_group("search"))
    p.add_argument("--top-k", type=int, default=50, help="results per query (default: %(default)s)")
    p.add_argument("--output", type=Path, required=True, help="JSON file to write")
    p.set_defaults(func=cmd_rank)

    p = _add_submit_parser(sub, "cirr", "test1", "files", "Write recall_submission_NAME.json and "
                           "recall_subset_submission_NAME.json, checked against the server's rules first. --split "
                           "val writes the same files for val, to score offline with `clip-cir score-cirr`.")
    p.set_defaults(func=cmd_submit_cirr)
    p = _add_score_parser(sub, "cirr", "recall_ or recall_subset_submission JSON")
    p.set_defaults(func=cmd_score_cirr)

    p = _add_submit_parser(sub, "circo", "test", "file", "Write circo_SPLIT_submission_NAME.json: {query id: "
                           "top-50 COCO image ids}, checked against the server's rules first (every query once, 50 "
                           "distinct gallery ids; compact JSON). The reference is not removed from its ranking (the "
                           "CIRCO protocol). --split val writes the same format for val, to score offline with "
                           "`clip-cir score-circo`.")
    opt.add_circo_args(p.add_argument_group("data"))
    p.set_defaults(func=cmd_submit_circo)
    p = _add_score_parser(sub, "circo", "JSON {query id: [50 integer image ids]}")
    p.set_defaults(func=cmd_score_circo)

    p = sub.add_parser("export", help="write a CLIP (+ Combiner) as a Hugging Face Hub repository in open_clip's format",
                       description="Write --output-dir in open_clip's hub layout (open_clip_config.json, "
                                   "open_clip_model.safetensors), the Combiner beside it (combiner.safetensors + "
                                   "combiner.json) and a model card (README.md) with the runs' settings and "
                                   "validation metrics. Plain open_clip loads the CLIP with "
                                   "create_model_and_transforms('hf-hub:ORG/NAME'); every clip-cir command loads "
                                   "both with --pretrained/--combiner hf-hub:ORG/NAME.")
    opt.add_model_args(p)
    group = p.add_argument_group("export")
    opt.add_combiner_arg(group)
    group.add_argument("--output-dir", type=Path, required=True, help="folder to write (written atomically)")
    group.add_argument("--overwrite", action="store_true", help="replace --output-dir if it is not empty")
    group.add_argument("--license", default="other",
                       help="license in the model card's metadata (default: %(default)s; the base model's "
                            "and the datasets' terms apply)")
    hub = p.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                     help="then upload the folder to this model repository (ORG/NAME; needs `hf auth login` or "
                          "HF_TOKEN, and the network)")
    hub.add_argument("--private", action="store_true", help="create the repository as private")
    p.set_defaults(func=cmd_export)

    from clip_cir.apps.report import add_report_args

    p = sub.add_parser("report", help="PNG plots of a run: training loss, validation recalls, retrieval examples",
                       description="Write training_loss.png, validation.png and (stage 1 / stage 2 runs) "
                                   "retrieval_examples.png for a run directory, and print their paths.")
    add_report_args(p)
    p.set_defaults(func=cmd_report)

    from clip_cir.apps.demo.app import DESCRIPTION as DEMO_DESCRIPTION
    from clip_cir.apps.demo.app import add_demo_arguments

    p = sub.add_parser("demo", help="web page + JSON API: search a gallery by reference image and caption",
                       description=DEMO_DESCRIPTION)
    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo)
    return parser


DATA_FOLDERS = {"cirr": "cirr_dataset/", "circo": "CIRCO/"}


def _add_submit_parser(sub, dataset: str, test_split: str, files: str, description: str) -> argparse.ArgumentParser:
    """submit-DATASET: the options every test-server submission command takes."""
    p = sub.add_parser(f"submit-{dataset}", help=f"{dataset.upper()} test-server submission {files}",
                       description=description)
    p.add_argument("--data-root", type=Path, required=True, help=f"folder containing {DATA_FOLDERS[dataset]}")
    p.add_argument("--split", default=test_split, help=f"{test_split} (default) or val")
    p.add_argument("--name", required=True, help="name that goes into the output file name(s)")
    p.add_argument("--output-dir", type=Path, required=True, help=f"folder to write the {files} in")
    p.set_defaults(fashioniq_categories=None)
    opt.add_model_args(p)
    add_combining_args(p)
    opt.add_encode_args(p)
    opt.add_search_args(p.add_argument_group("search"))
    return p


def _add_score_parser(sub, dataset: str, submission_help: str) -> argparse.ArgumentParser:
    """score-DATASET: score a submission file offline against a split with ground truth."""
    p = sub.add_parser(f"score-{dataset}", help=f"score a {dataset.upper()} submission file against val ground truth")
    p.add_argument("--data-root", type=Path, required=True, help=f"folder containing {DATA_FOLDERS[dataset]}")
    p.add_argument("--submission", type=Path, required=True, help=submission_help)
    p.add_argument("--split", default="val", help="split with ground truth (default: %(default)s)")
    p.add_argument("--output", type=Path, help="write the scores as JSON here")
    return p


TRAINING_PROGRAMS = {
    "pretrain": ("clip_cir.training.pretrain", "contrastive image-caption pretraining of a CLIP on a caption CSV"),
    "finetune": ("clip_cir.training.stage1", "stage 1: task-oriented CLIP fine-tuning (same as stage1/finetune.py)"),
    "train-combiner": ("clip_cir.training.stage2", "stage 2: train the Combiner (same as stage2/train_combiner.py)"),
    "quickstart": ("clip_cir.apps.quickstart", "the whole method on synthetic data in a few CPU minutes"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAINING_PROGRAMS:
        # Training programs own their (long) argument lists; they are also `accelerate launch`-able scripts.
        import importlib

        module = importlib.import_module(TRAINING_PROGRAMS[argv[0]][0])
        module.main(argv[1:], prog=f"clip-cir {argv[0]}")
        return
    parser = build_parser()
    args = parser.parse_args(argv)
    opt.setup_logging(args.verbose)
    opt.run_main(lambda: args.func(args), "clip-cir")


if __name__ == "__main__":
    main(sys.argv[1:])
