"""`clip-cir`: data, evaluation, submissions and tools around the two training stages."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from functools import partial
from pathlib import Path

from clip_cir import params as opt
from clip_cir.apps.entry import program_main, run_main, setup_logging
from clip_cir.apps.prepare import prepare
from clip_cir.errors import CIRError

log = logging.getLogger("clip_cir")


def search_index(args: argparse.Namespace):
    """The command's nearest-neighbour index factory (None: exact), checked before any work."""
    from clip_cir.encoding.search import index_factory

    return index_factory(opt.ranking_settings(args).search)


def cmd_eval(args: argparse.Namespace) -> None:
    if args.catalogue is not None:
        from clip_cir.apps.attributes import cmd_attribute_eval

        return cmd_attribute_eval(args)
    _no_attribute_options(args)
    from clip_cir.evaluation.evaluate import evaluate
    from clip_cir.evaluation.metrics import format_metrics
    from clip_cir.models.files import write_json

    index_factory = search_index(args)
    prepared = prepare(args, need_targets=True)
    metrics = evaluate(prepared.clip, prepared.splits, prepared.combine, prepared.encode, index_factory)
    print(format_metrics(metrics, label=args.dataset))
    if args.output:
        skipped = prepared.skipped_images
        extra = {"skipped_images": skipped, "comparable_with_published": False} if skipped else {}
        write_json(args.output, {**{k: round(v, 4) for k, v in metrics.items()}, **extra})
        log.info("metrics written to %s", args.output)


def _no_attribute_options(args: argparse.Namespace) -> None:
    """The attribute-catalogue options go with --catalogue only."""
    given = [flag for flag, name in (("--attributes", "attributes"), ("--attribute-template", "attribute_template"),
                                     ("--catalogue-layout", "catalogue_layout"), ("--image-root", "image_root"))
             if getattr(args, name, None) is not None]
    if args.command == "eval" and args.top_k is not None:
        given.append("--top-k")
    if given:
        raise CIRError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --catalogue DIR "
                       f"(an attribute catalogue)")


def cmd_rank(args: argparse.Namespace) -> None:
    if args.catalogue is not None:
        from clip_cir.apps.attributes import cmd_attribute_rank

        return cmd_attribute_rank(args)
    _no_attribute_options(args)
    from clip_cir.evaluation.evaluate import encode_and_rank
    from clip_cir.models.files import write_json

    opt.check_positive(args, ["top_k"])
    index_factory = search_index(args)
    prepared = prepare(args)
    clip = prepared.clip
    queries = []
    for split in prepared.splits:
        ranking = encode_and_rank(clip, split, prepared.combine, prepared.encode, args.top_k, index_factory)
        names = list(split.gallery)
        for query, top, scores in zip(split.queries, ranking.indices.tolist(), ranking.scores.tolist()):
            queries.append({"qid": query.qid, "benchmark": split.name, "reference": query.reference,
                            "caption": query.eval_caption, "target": query.target,
                            **({"target_label": query.target_label} if split.gallery_labels is not None else {}),
                            "ranking": [{"name": names[i], "score": round(s, 6)} for i, s in zip(top, scores)]})
    source = {"gallery_dir": str(args.gallery_dir.absolute())} if args.gallery_dir else {
        "dataset": args.dataset, "split": prepared.splits[0].split}  # the split read (default: the validation one)
    name = "combiner" if args.combiner else prepared.combine.name if args.zero_shot else args.combining
    combining = {"combining": name,
                 **({"slerp_alpha": args.slerp_alpha} if args.combining == "slerp" and not args.combiner else {}),
                 **({"zero_shot": str(args.zero_shot), "prompt": prepared.combine.template} if args.zero_shot else {})}
    write_json(args.output, {**source, "model": clip.describe(), **combining, "top_k": args.top_k,
                             "queries": queries})
    print(f"rankings of {len(queries)} queries written to {args.output}")


def _submission_ranking(args: argparse.Namespace, test_split: str, k: int):
    """What submit-cirr and submit-circo share: check the split, then data, model and the top-k
    ranking of every query (reference removed or not as the dataset's protocol says)."""
    from clip_cir.evaluation.evaluate import encode_and_rank

    if args.split not in (test_split, "val"):
        raise CIRError(f"--split must be {test_split} or val for a {args.dataset.upper()} submission, "
                       f"got '{args.split}'")
    index_factory = search_index(args)
    prepared = prepare(args, purpose="submission")
    split = prepared.splits[0]
    return split, encode_and_rank(prepared.clip, split, prepared.combine, prepared.encode, k, index_factory)


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
        from clip_cir.models.files import write_json
        write_json(args.output, {k: round(v, 4) for k, v in scores.items()})


def cmd_submit_cirr(args: argparse.Namespace) -> None:
    from clip_cir.evaluation.submission import (
        RECALL_LENGTH,
        build_submissions,
        write_submissions,
    )

    split, ranking = _submission_ranking(args, "test1", RECALL_LENGTH)
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

    split, ranking = _submission_ranking(args, "test", CIRCO_LENGTH)
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
                          overwrite=args.overwrite, zero_shot_source=args.zero_shot)
    print(folder)


def cmd_synth(args: argparse.Namespace) -> None:
    from clip_cir.data import synthetic

    opt.check_positive(args, ["train", "val", "test", "size"])
    classic = list(synthetic.CLASSIC) if "all" in args.classic else args.classic
    try:
        summary = synthetic.generate(args.root, n_train=args.train, n_val=args.val, n_test=args.test,
                                     size=args.size, seed=args.seed, overwrite=args.overwrite, n_circo=args.circo,
                                     circo_distractors=args.circo_distractors, classic=classic)
    except ValueError as e:
        raise CIRError(str(e)) from None
    print(json.dumps(summary, indent=2, default=str))


def cmd_convert(args: argparse.Namespace) -> None:
    from clip_cir.data.convert import convert
    from clip_cir.data.registry import reader_options

    data = opt.data_settings(args, dataset=args.source)
    written = convert(args.source, args.data_root, args.output, reader_options(data))
    print(f"{args.source} written to {args.output} in the triplet layout ({len(written)} files); evaluate it with "
          f"--dataset triplets --data-root {args.output}")


def cmd_report(args: argparse.Namespace) -> None:
    from clip_cir.apps.report import run_report

    run_report(args)


def cmd_demo(args: argparse.Namespace) -> None:
    from clip_cir.apps.demo.app import run_demo

    run_demo(args)


COMMANDS = {"synth": cmd_synth, "convert": cmd_convert, "eval": cmd_eval, "rank": cmd_rank,
            "submit-cirr": cmd_submit_cirr, "score-cirr": cmd_score_cirr, "submit-circo": cmd_submit_circo,
            "score-circo": cmd_score_circo,
            "export": cmd_export, "report": cmd_report, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in opt.PROGRAMS:
        # Programs of their own (the training programs are also `accelerate launch`-able scripts): their
        # command line is parsed before their module, and torch, load.
        program, prog = opt.PROGRAMS[argv[0]], f"clip-cir {argv[0]}"
        run = lambda args: getattr(importlib.import_module(program.module), program.function)(args)  # noqa: E731
        program_main(partial(program.parser, prog), run, argv[1:], prog)
        return
    parser = opt.cli_parser()
    args = parser.parse_args(argv)
    if args.command in opt.PROGRAMS:  # reached only after an option of clip-cir's own, e.g. -v
        parser.error(f"{args.command} must come first: clip-cir {args.command} [options]")
    setup_logging(args.verbose)
    run_main(lambda: COMMANDS[args.command](args), "clip-cir")


if __name__ == "__main__":
    main(sys.argv[1:])
