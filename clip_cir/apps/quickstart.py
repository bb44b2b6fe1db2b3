"""`clip-cir quickstart`: the whole method on synthetic data, on a CPU, in a few minutes.

synthetic data -> pretrain a tiny CLIP -> zero-shot evaluation -> stage 1 -> evaluation ->
stage 2 -> evaluation -> the CIRR-trained model on a CIRCO-layout world (zero-shot transfer,
mAP@K) -> CIRR submission files -> plots, ending with results tables. Every step goes through
a public entry point a user has too: the training through the Python API (`clip_cir.pretrain`,
`clip_cir.finetune`, `clip_cir.train_combiner`, which the training programs run), the rest
through `clip-cir synth`, `eval`, `submit-cirr` and `report`; every number is measured in this run. It ends with
the `clip-cir demo` command that serves its runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import shutil
import time
from functools import partial
from pathlib import Path

from clip_cir import params as opt
from clip_cir.constants import TINY_MODEL
from clip_cir.models.files import write_json, write_text

log = logging.getLogger("clip_cir")
MODEL = TINY_MODEL
# The recipe (how it was chosen: docs/quickstart.md). Every program gets linear warmup then
# cosine decay (open_clip's --warmup / --lr-scheduler cosine). Pretraining and stage 1 use small
# batches: on a CPU an optimizer step costs about its batch, so at a fixed budget a smaller batch
# buys more steps. The Combiner's steps are cheap (cached features): a larger batch at a
# proportionally larger learning rate.
# The Combiner's validation ranks cached features (milliseconds here), so it validates every epoch.
PRETRAIN_RECIPE = dict(batch_size=64, lr=5e-4, weight_decay=0.1, lr_scheduler="cosine", warmup=50)
STAGE1_RECIPE = dict(batch_size=32, lr=3e-4, lr_scheduler="cosine", warmup=50)
STAGE2_RECIPE = dict(batch_size=256, lr=2e-3, lr_scheduler="cosine", warmup=50, validation_frequency=1)
COLUMNS = [("recall_at1", "R@1"), ("recall_at5", "R@5"), ("recall_at10", "R@10"), ("recall_at50", "R@50"),
           ("recall_subset_at1", "Rs@1"), ("recall_subset_at2", "Rs@2"), ("recall_subset_at3", "Rs@3"),
           ("recall_avg", "Avg")]
CIRCO_COLUMNS = [(f"map_at{k}", f"mAP@{k}") for k in (5, 10, 25, 50)] + [(f"recall_at{k}", f"R@{k}")
                                                                          for k in (5, 10, 25, 50)]


class Steps:
    """Numbered, timed step headers, so a newcomer sees where the five minutes go."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def __call__(self, title: str) -> None:
        self.done += 1
        print(f"\n[{self.done}/{self.total}] {title}  (t={time.perf_counter() - self.started:.0f}s)", flush=True)


def _cirr_caption_csv(data: Path) -> Path:
    """The per-image captions of the CIRR layout only (the quickstart evaluates CIRR)."""
    source, target = data / "pretrain_captions.csv", data / "pretrain_captions_cirr.csv"
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    with open(target, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t").writerows([rows[0]] + [r for r in rows[1:] if r[0].startswith("cirr_dataset/")])
    return target


def _synth(args: argparse.Namespace, data: Path) -> None:
    from clip_cir.data import synthetic

    info = data / "synth_info.json"
    wanted = {"n_train": args.train, "n_val": args.val, "n_test": args.test, "size": 64, "seed": args.seed,
              "n_circo": args.circo, "circo_distractors": 5 * args.circo}
    if info.is_file():
        saved = json.loads(info.read_text()).get("args", {})
        if all(saved.get(k) == v for k, v in wanted.items()):
            print(f"reusing synthetic data in {data}")
            return
    synthetic.generate(data, **wanted, overwrite=True)


def _eval(data: Path, out: Path, extra: list[str], dataset: str = "cirr") -> dict[str, float]:
    from clip_cir.apps.cli import main as cli_main

    cli_main(["eval", "--dataset", dataset, "--data-root", str(data), "--num-workers", "0", "--output", str(out),
              *extra])
    return json.loads(out.read_text())


def results_table(rows: dict[str, dict[str, float]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    """Markdown table of val metrics (CIRR recalls by default), one row per method."""
    lines = ["| method | " + " | ".join(label for _, label in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[key]:.2f}" for key, _ in columns) + " |")
    return "\n".join(lines)


def demo_command(workdir: Path) -> str:
    """The `clip-cir demo` command that serves a quickstart's runs (its data, stage-1 CLIP and
    Combiner), ready to paste into a shell: the next thing a newcomer wants to try."""
    data, runs = workdir / "data", workdir / "runs"
    return shlex.join(["clip-cir", "demo", "--dataset", "cirr", "--data-root", str(data), "--pretrained",
                       str(runs / "stage1"), "--combiner", str(runs / "stage2")])


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from clip_cir import api
    from clip_cir.apps.cli import main as cli_main
    from clip_cir.training.run import seed_everything

    opt.check_positive(args, ["train", "val", "test", "pretrain_epochs", "stage1_epochs", "stage2_epochs"])
    work = args.workdir
    data, runs, evals, subs = work / "data", work / "runs", work / "eval", work / "submission"
    if runs.exists():
        shutil.rmtree(runs)
    for folder in (evals, subs):
        folder.mkdir(parents=True, exist_ok=True)
    common = dict(num_workers=args.num_workers, no_progress=True, seed=args.seed, output_dir=runs)
    step = Steps(9 + (not args.no_report) + (args.circo > 0))

    step(f"synthetic data (CIRR, FashionIQ{' and CIRCO' if args.circo else ''} layouts) -> {data}")
    _synth(args, data)
    step("pretrain the tiny CLIP on per-image captions (the method starts from a pretrained CLIP)")
    api.pretrain(train_data=_cirr_caption_csv(data), model=MODEL, epochs=args.pretrain_epochs, **PRETRAIN_RECIPE,
                 experiment_name="pretrain", **common)
    rows: dict[str, dict[str, float]] = {}
    step("baselines: untrained CLIP, image only, zero-shot element-wise sum")
    seed_everything(args.seed)  # the untrained row's random init: a function of --seed, not of what ran before
    rows["untrained CLIP, sum"] = _eval(data, evals / "untrained.json", ["--model", MODEL])
    rows["image only (pretrained CLIP)"] = _eval(data, evals / "image_only.json",
                                                 ["--pretrained", str(runs / "pretrain"), "--combining", "image"])
    rows["zero-shot sum (pretrained CLIP)"] = _eval(data, evals / "zero_shot.json",
                                                    ["--pretrained", str(runs / "pretrain")])
    step(f"stage 1: fine-tune CLIP ({args.encoder} encoder{'s' if args.encoder == 'both' else ''})")
    api.finetune(dataset="cirr", data_root=data, pretrained=str(runs / "pretrain"), encoder=args.encoder,
                 epochs=args.stage1_epochs, **STAGE1_RECIPE, experiment_name="stage1", **common)
    step("evaluate stage 1 + element-wise sum")
    rows["stage 1 + sum"] = _eval(data, evals / "stage1.json", ["--pretrained", str(runs / "stage1")])
    step("stage 2: train the Combiner on the frozen stage-1 CLIP")
    api.train_combiner(dataset="cirr", data_root=data, pretrained=str(runs / "stage1"), epochs=args.stage2_epochs,
                       **STAGE2_RECIPE, experiment_name="stage2", **common)
    step("evaluate stage 1 + Combiner")
    rows["stage 1 + Combiner"] = _eval(data, evals / "stage2.json",
                                       ["--pretrained", str(runs / "stage1"), "--combiner", str(runs / "stage2")])
    circo_rows: dict[str, dict[str, float]] = {}
    if args.circo:
        step("zero-shot transfer: the CIRR-trained model on the CIRCO-layout world (several ground truths, mAP@K)")
        stage1 = ["--pretrained", str(runs / "stage1")]
        circo_rows["stage 1 + sum"] = _eval(data, evals / "circo_stage1.json", stage1, "circo")
        circo_rows["stage 1 + Combiner"] = _eval(data, evals / "circo_stage2.json",
                                                 [*stage1, "--combiner", str(runs / "stage2")], "circo")
    step("CIRR test-server submission files for the synthetic test1 split")
    cli_main(["submit-cirr", "--data-root", str(data), "--pretrained", str(runs / "stage1"), "--combiner",
              str(runs / "stage2"), "--name", "quickstart", "--output-dir", str(subs), "--num-workers", "0"])
    plots: list[Path] = []
    if not args.no_report:
        step("plots of the runs")
        from clip_cir.apps import report

        for name in ("stage1", "stage2"):
            plots += report.make_report(runs / name)
    step("results")
    table = results_table(rows)
    write_json(work / "results.json", rows)
    if circo_rows:
        write_json(work / "results_circo.json", circo_rows)
    print("CIRR-layout synthetic val split, recalls in % (R@K: whole gallery, reference removed; "
          "Rs@K: within the query's 6-image set; Avg = (R@5 + Rs@1) / 2, CIRR's headline number)\n")
    print(table)
    if circo_rows:
        circo_table = results_table(circo_rows, CIRCO_COLUMNS)
        table += "\n\nCIRCO-layout synthetic val split, zero-shot (trained on CIRR only):\n\n" + circo_table
        print(f"\nCIRCO-layout synthetic val split ({args.circo} queries, several ground truths each), the "
              f"CIRR-trained model zero-shot; in % (mAP@K over all ground truths, R@K of the target; reference "
              f"not removed, as in CIRCO)\n")
        print(circo_table)
    write_text(work / "results.md", table + "\n")
    print(f"\nruns:        {', '.join(str(runs / n) for n in ('pretrain', 'stage1', 'stage2'))}")
    print(f"submission:  {subs}/recall_submission_quickstart.json, {subs}/recall_subset_submission_quickstart.json")
    if plots:
        print(f"plots:       {', '.join(str(p) for p in plots)}")
    print(f"table:       {work / 'results.md'}")
    print(f"\nnext: search the val gallery in the web demo (then open http://127.0.0.1:8000):\n  {demo_command(work)}")
    return rows


def main(argv: list[str] | None = None, prog: str = "clip-cir quickstart") -> None:
    from clip_cir.apps.entry import program_main

    program_main(partial(opt.quickstart_parser, prog), run, argv, prog)
