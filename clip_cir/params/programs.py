"""Each program's parser: `clip-cir` and its subcommands, the training programs (also scripts:
stage1/finetune.py, stage2/train_combiner.py, zero_shot/train_mapping.py), the quickstart, the
report and the demo.

Built from the option groups in `clip_cir.params.groups`; the programs import their parser from
here and hold no option of their own. Program parsers take `required`: see `parse_with_resume`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from clip_cir.config import CaptionDataConfig, PretrainConfig, Stage1Config, Stage2Config
from clip_cir.constants import COMPOSITORS, DEMO_MAX_K, ENCODERS, STAGE2_LOSSES
from clip_cir.data import DATASETS
from clip_cir.data.synthetic.classic import CLASSIC
from clip_cir.params.attributes import add_attribute_eval_args, add_top_k_arg, attributes_parser
from clip_cir.params.groups import (
    add_circo_args,
    add_combiner_arg,
    add_combining_args,
    add_csv_caption_args,
    add_data_args,
    add_data_root_arg,
    add_encode_args,
    add_feature_cache_args,
    add_gallery_dir_arg,
    add_model_args,
    add_num_workers_arg,
    add_output_arg,
    add_output_dir_arg,
    add_reader_option_args,
    add_search_args,
    add_seed_arg,
    add_skip_missing_arg,
    add_split_arg,
    add_transform_args,
    add_zero_shot_arg,
    required_option,
)
from clip_cir.params.training import (
    add_tower_training_args,
    add_training_args,
)
from clip_cir.params.zero_shot import zero_shot_parser

if TYPE_CHECKING:
    from clip_cir.params.groups import Group

CLI_DESCRIPTION = "`clip-cir`: data, evaluation, submissions and tools around the two training stages."
DEMO_DESCRIPTION = ("Serve a web page (and a JSON API) to search a dataset split's gallery by reference image + "
                    "relative caption, with a CLIP and the element-wise sum or a Combiner. Gallery features come "
                    "from the feature cache, so a gallery evaluated or shown before starts without encoding.")
DATA_FOLDERS = {"cirr": "cirr_dataset/", "circo": "CIRCO/"}


# ---- options more than one program has, with each program's default and help ------------------------

def add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_encoder_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--encoder", choices=ENCODERS, default=Stage1Config.encoder, help=help)


def add_overwrite_arg(parser: Group, help: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_synthetic_size_args(parser: argparse.ArgumentParser, *, train: int, val: int, test: int, circo: int,
                            circo_help: str, what: str = "") -> None:
    """How many queries a synthetic world has (`clip-cir synth`, the quickstart)."""
    parser.add_argument("--train", type=int, default=train, help=f"{what}training queries (default: %(default)s)")
    parser.add_argument("--val", type=int, default=val, help=f"{what}validation queries (default: %(default)s)")
    parser.add_argument("--test", type=int, default=test, help=f"{what}test queries (default: %(default)s)")
    parser.add_argument("--circo", type=int, default=circo, help=circo_help)


# ---- the training programs, the quickstart, the report and the demo ---------------------------------

def stage1_parser(prog: str = "stage1/finetune.py", required: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Stage 1 of the method: fine-tune CLIP's text and/or image encoder on composed "
                               "queries (element-wise sum of image and text features, batch contrastive loss). "
                               "Run with `accelerate launch` for GPUs, mixed precision and DDP, or plain python.")
    add_data_args(parser, split=False, required=required)
    add_model_args(parser)
    add_encoder_arg(parser, "which towers train; the others are frozen and their features computed once "
                            "(default: %(default)s, as in the CVPR-W paper; 'both' is the journal version)")
    add_transform_args(parser)
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="gradient checkpointing: recompute each tower's activations in the backward pass "
                             "instead of keeping them (transformer, timm and ResNet towers, RN50x4's included)")
    add_training_args(parser, Stage1Config())
    add_tower_training_args(parser)
    return parser


def stage2_parser(prog: str = "stage2/train_combiner.py", required: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Stage 2 of the method: train a Combiner network on frozen CLIP features "
                               "(typically the stage-1 CLIP: --pretrained STAGE1_RUN_DIR). Run with "
                               "`accelerate launch` or plain python.")
    add_data_args(parser, split=False, required=required)
    add_model_args(parser)
    network = parser.add_argument_group("compositor", "which network composes the query (docs/compositors.md)")
    network.add_argument("--compositor", choices=COMPOSITORS, default=Stage2Config.compositor,
                         help="the method's Combiner (default), or a related system's compositor on the same frozen "
                              "CLIP features: TIRG, MAAF, CoSMo, LBF (the last three read token features)")
    network.add_argument("--compositor-options", nargs="+", metavar="KEY=VALUE",
                         default=list(Stage2Config.compositor_options),
                         help="the compositor's settings beyond its paper's defaults, e.g. residual=true (MAAF with "
                              "the CFQ paper's residual attention fusion); docs/compositors.md lists them")
    network.add_argument("--token-grid", type=int, metavar="N", default=Stage2Config.token_grid,
                         help="average-pool the image token grid to at most N x N cells (default: the tower's own "
                              "grid, e.g. 9x9 for RN50x4 at 288 px, 14x14 for ViT-B-16)")
    network.add_argument("--loss", choices=STAGE2_LOSSES, default=Stage2Config.loss,
                         help="the method's batch contrastive loss (default), or TIRG/LBF's soft triplet plus batch "
                              "classification loss")
    parser.add_argument("--projection-dim", type=int, default=Stage2Config.projection_dim,
                        help="Combiner projection size (default: 4x the CLIP embedding size; 2560 for RN50x4)")
    parser.add_argument("--hidden-dim", type=int, default=Stage2Config.hidden_dim,
                        help="Combiner hidden size (default: 8x the CLIP embedding size; 5120 for RN50x4)")
    add_transform_args(parser)
    add_training_args(parser, Stage2Config())
    return parser


def pretrain_parser(prog: str = "clip-cir pretrain", required: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Contrastive image-caption pretraining (open_clip's CLIP loss, learned "
                               "temperature) on a CSV of image paths and captions. Its checkpoint loads as "
                               "--pretrained everywhere.")
    data = parser.add_argument_group("data")
    data.add_argument("--train-data", type=Path, **required_option(required),
                      help="CSV of images and captions (image paths relative to the CSV's folder or absolute)")
    data.add_argument("--csv-img-key", default=CaptionDataConfig.csv_img_key,
                      help="image path column (default: %(default)s)")
    add_csv_caption_args(data, caption=CaptionDataConfig.csv_caption_key, separator=CaptionDataConfig.csv_separator,
                         separator_help="column separator (default: tab)")
    data.add_argument("--val-fraction", type=float, default=CaptionDataConfig.val_fraction,
                      help="captions held out to measure the loss (default: %(default)s)")
    add_model_args(parser)
    add_transform_args(parser)
    add_training_args(parser, PretrainConfig())
    add_tower_training_args(parser)
    return parser


def quickstart_parser(prog: str = "clip-cir quickstart", required: bool = True) -> argparse.ArgumentParser:
    """The quickstart's options (none is required; `required` is every program parser's argument)."""
    parser = argparse.ArgumentParser(prog=prog, description="`clip-cir quickstart`: the whole method on synthetic "
                                     "data, on a CPU, in a few minutes. Defaults take about five minutes on 2 CPU "
                                     "cores.")
    parser.add_argument("--workdir", type=Path, default=Path("quickstart"),
                        help="where data, runs, submissions and plots go (default: %(default)s); runs/ inside "
                             "is replaced on every call, the data is reused when its settings match")
    add_synthetic_size_args(parser, train=4000, val=1000, test=500, circo=50, what="synthetic ",
                            circo_help="queries in each CIRCO-layout split the CIRR-trained model is also evaluated "
                                       "on, zero-shot; 0 skips it (default: %(default)s)")
    parser.add_argument("--pretrain-epochs", type=int, default=4, help="(default: %(default)s)")
    parser.add_argument("--stage1-epochs", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--stage2-epochs", type=int, default=30, help="(default: %(default)s)")
    add_encoder_arg(parser, "stage-1 towers to train (default: %(default)s: on this budget it beats 'both' at "
                            "equal time, see docs/quickstart.md)")
    add_num_workers_arg(parser, default=1)
    add_seed_arg(parser, help="")
    parser.add_argument("--no-report", action="store_true", help="skip the plots")
    return parser


def add_report_args(parser: argparse.ArgumentParser) -> None:
    """The report's options (`clip-cir report` and `python -m clip_cir.apps.report`)."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory made by finetune, "
                        "train-combiner or pretrain")
    add_output_dir_arg(parser, "where to write the PNGs (default: RUN_DIR/report)")
    parser.add_argument("--queries", type=int, default=4,
                        help="validation queries in the retrieval figure; 0 for none (default: %(default)s)")
    add_split_arg(parser, None, "split the queries come from (default: the benchmark's validation split)")
    add_seed_arg(parser, help="which queries are drawn")
    add_feature_cache_args(parser)


def report_parser(prog: str = "clip-cir report") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="`clip-cir report RUN_DIR`: PNG figures of a training "
                                     "run, to see at a glance what it learned.")
    add_report_args(parser)
    return parser


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    """The demo's options (`clip-cir demo` and `python demo/app.py`)."""
    add_data_args(parser, required=False)
    add_gallery_dir_arg(parser.add_argument_group("gallery folder"), queries=False)
    add_model_args(parser)
    add_combining_args(parser)
    add_encode_args(parser)
    add_skip_missing_arg(parser, training=False)
    add_attribute_eval_args(parser, evaluating=False, purpose="serve an attribute catalogue's split, searched by "
                                                              "caption or by changing one attribute,")
    group = parser.add_argument_group("demo server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 exposes "
                            "the demo to the network)")
    group.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    add_top_k_arg(group, 10, f"results shown per query, 1..{DEMO_MAX_K} (default: %(default)s)")
    add_search_args(group)
    group.add_argument("--max-upload-mb", type=float, default=10.0,
                       help="largest accepted upload (default: %(default)s)")


def demo_parser(prog: str = "clip-cir demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DEMO_DESCRIPTION)
    add_verbose_arg(parser)
    add_demo_args(parser)
    return parser


class Program(NamedTuple):
    """A `clip-cir` subcommand that is a program of its own: `module.function(args)` does the work."""

    module: str
    function: str
    parser: Callable[..., argparse.ArgumentParser]
    help: str


PROGRAMS = {
    "pretrain": Program("clip_cir.apps.train", "pretrain", pretrain_parser,
                        "contrastive image-caption pretraining of a CLIP on a caption CSV"),
    "finetune": Program("clip_cir.apps.train", "finetune", stage1_parser,
                        "stage 1: task-oriented CLIP fine-tuning (same as stage1/finetune.py)"),
    "train-combiner": Program("clip_cir.apps.train", "train_combiner", stage2_parser,
                              "stage 2: train the Combiner (same as stage2/train_combiner.py)"),
    "train-attributes": Program("clip_cir.apps.train", "train_attributes", attributes_parser,
                                "attribute manipulation: train FLAM on an attribute catalogue's CLIP features"),
    "zero-shot": Program("clip_cir.apps.train", "zero_shot", zero_shot_parser,
                         "train a zero-shot mapping network: Pic2Word, SEARLE or LinCIR (same as "
                         "zero_shot/train_mapping.py)"),
    "quickstart": Program("clip_cir.apps.quickstart", "run", quickstart_parser,
                          "the whole method on synthetic data in a few CPU minutes"),
}


# ---- clip-cir -----------------------------------------------------------------------------------------

def cli_parser() -> argparse.ArgumentParser:
    """`clip-cir`: the subcommand is `args.command`; the programs in `PROGRAMS` are listed here and
    parse their own command lines."""
    parser = argparse.ArgumentParser(prog="clip-cir", description=CLI_DESCRIPTION)
    add_verbose_arg(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write a synthetic shapes dataset in the CIRR, FashionIQ and CIRCO layouts "
                                     "(and the classic benchmarks' with --classic)",
                       description="Render a deterministic 2-D shapes world (CSS-like) and write it in the three "
                                   "published layouts, plus per-image captions for pretraining; --classic adds small "
                                   "stand-ins of the classic benchmarks in theirs.")
    p.add_argument("--root", type=Path, required=True, help="output folder (becomes a --data-root)")
    add_synthetic_size_args(p, train=3000, val=600, test=600, circo=100,
                            circo_help="CIRCO queries in each of val and test, with 1-8 ground truths each; 0 writes "
                                       "no CIRCO folder (default: %(default)s)")
    p.add_argument("--circo-distractors", type=int, default=None,
                   help="unrelated scenes added to the CIRCO gallery (default: 5 per CIRCO query)")
    p.add_argument("--classic", nargs="+", choices=("all", *CLASSIC), default=[], metavar="NAME",
                   help=f"also write small stand-ins (a few dozen images each) of these benchmarks in their own "
                        f"layouts: all, or any of {', '.join(CLASSIC)}")
    p.add_argument("--size", type=int, default=64, help="short image side in pixels (default: %(default)s)")
    add_seed_arg(p)
    add_overwrite_arg(p, "replace an existing dataset under --root")

    for name, program in PROGRAMS.items():
        sub.add_parser(name, help=program.help, add_help=False)  # listed here; parsed by program_main

    p = sub.add_parser("eval", help="validation recalls of a CLIP (+ Combiner)",
                       description="Rank each query's whole split gallery and report the method's recalls "
                                   "(CIRR: R@1/5/10/50, Recall_subset@1/2/3, plus soft-credit; FashionIQ: "
                                   "R@10/50 per category and averages; CIRCO: mAP@5/10/25/50, R@5/10/25/50 and "
                                   "mAP@10 per semantic aspect).")
    _add_ranking_args(p, required=False)
    add_output_arg(p, "write the metrics as JSON here")
    add_attribute_eval_args(p, evaluating=True)

    p = sub.add_parser("rank", help="write each query's top-K gallery images (any split, test included)")
    _add_ranking_args(p, required=False)
    add_gallery_dir_arg(p.add_argument_group("gallery folder"), queries=True)
    add_top_k_arg(p, 50, "results per query (default: %(default)s)")
    add_output_arg(p, "JSON file to write", required=True)
    add_attribute_eval_args(p, evaluating=False)

    _add_submit_parser(sub, "cirr", "test1", "files", "Write recall_submission_NAME.json and "
                       "recall_subset_submission_NAME.json, checked against the server's rules first. --split "
                       "val writes the same files for val, to score offline with `clip-cir score-cirr`.")
    _add_score_parser(sub, "cirr", "recall_ or recall_subset_submission JSON")
    p = _add_submit_parser(sub, "circo", "test", "file", "Write circo_SPLIT_submission_NAME.json: {query id: "
                           "top-50 COCO image ids}, checked against the server's rules first (every query once, 50 "
                           "distinct gallery ids; compact JSON). The reference is not removed from its ranking (the "
                           "CIRCO protocol). --split val writes the same format for val, to score offline with "
                           "`clip-cir score-circo`.")
    add_circo_args(p.add_argument_group("data"))
    _add_score_parser(sub, "circo", "JSON {query id: [50 integer image ids]}")

    p = sub.add_parser("convert", help="write a benchmark in the generic triplet layout",
                       description="Write every split of a benchmark as DIR/<split>.jsonl with gallery files and "
                                   "the benchmark's protocol (clip_cir.json), for --dataset triplets: eval on the "
                                   "output gives the benchmark's own numbers (CIRR's subset and soft metrics "
                                   "aside). Only the annotations are read; images are referenced, not copied.")
    p.add_argument("source", choices=[d for d in DATASETS if d != "triplets"], help="the benchmark")
    add_data_root_arg(p, "folder containing the benchmark in its published layout")
    add_output_arg(p, "folder to write (new or empty)", required=True)
    add_reader_option_args(p.add_argument_group("reading", "how the benchmark is read (as --dataset reads it)"),
                           triplets=False)

    p = sub.add_parser("export",
                       help="write a CLIP (+ Combiner) as a Hugging Face Hub repository in open_clip's format",
                       description="Write --output-dir in open_clip's hub layout (open_clip_config.json, "
                                   "open_clip_model.safetensors), the Combiner beside it (combiner.safetensors + "
                                   "combiner.json) and a model card (README.md) with the runs' settings and "
                                   "validation metrics. Plain open_clip loads the CLIP with "
                                   "create_model_and_transforms('hf-hub:ORG/NAME'); every clip-cir command loads "
                                   "both with --pretrained/--combiner hf-hub:ORG/NAME.")
    add_model_args(p)
    group = p.add_argument_group("export")
    add_combiner_arg(group)
    add_zero_shot_arg(group, "a zero-shot mapping network to export beside the CLIP instead of a Combiner (a "
                             "`clip-cir zero-shot` run or φ file), as phi.safetensors")
    add_output_dir_arg(group, "folder to write (written atomically)", required=True)
    add_overwrite_arg(group, "replace --output-dir if it is not empty")
    group.add_argument("--license", default="other",
                       help="license in the model card's metadata (default: %(default)s; the base model's "
                            "and the datasets' terms apply)")
    hub = p.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                     help="then upload the folder to this model repository (ORG/NAME; needs `hf auth login` or "
                          "HF_TOKEN, and the network)")
    hub.add_argument("--private", action="store_true", help="create the repository as private")

    p = sub.add_parser("report", help="PNG plots of a run: training loss, validation recalls, retrieval examples",
                       description="Write training_loss.png, validation.png and (stage 1 / stage 2 runs) "
                                   "retrieval_examples.png for a run directory, and print their paths.")
    add_report_args(p)

    p = sub.add_parser("demo", help="web page + JSON API: search a gallery by reference image and caption",
                       description=DEMO_DESCRIPTION)
    add_demo_args(p)
    return parser


def _add_ranking_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """What eval and rank share: data, model, combining, encoding, missing images, search."""
    add_data_args(p, required=required)
    add_model_args(p)
    add_combining_args(p)
    add_encode_args(p)
    add_skip_missing_arg(p, training=False)
    add_search_args(p.add_argument_group("search"))


def _add_submit_parser(sub, dataset: str, test_split: str, files: str, description: str) -> argparse.ArgumentParser:
    """submit-DATASET: the options every test-server submission command takes."""
    p = sub.add_parser(f"submit-{dataset}", help=f"{dataset.upper()} test-server submission {files}",
                       description=description)
    add_data_root_arg(p, f"folder containing {DATA_FOLDERS[dataset]}")
    add_split_arg(p, test_split, f"{test_split} (default) or val")
    p.add_argument("--name", required=True, help="name that goes into the output file name(s)")
    add_output_dir_arg(p, f"folder to write the {files} in", required=True)
    p.set_defaults(dataset=dataset, fashioniq_categories=None)
    add_model_args(p)
    add_combining_args(p)
    add_encode_args(p)
    add_search_args(p.add_argument_group("search"))
    return p


def _add_score_parser(sub, dataset: str, submission_help: str) -> argparse.ArgumentParser:
    """score-DATASET: score a submission file offline against a split with ground truth."""
    p = sub.add_parser(f"score-{dataset}", help=f"score a {dataset.upper()} submission file against val ground truth")
    add_data_root_arg(p, f"folder containing {DATA_FOLDERS[dataset]}")
    p.add_argument("--submission", type=Path, required=True, help=submission_help)
    add_split_arg(p, "val", "split with ground truth (default: %(default)s)")
    add_output_arg(p, "write the scores as JSON here")
    return p
