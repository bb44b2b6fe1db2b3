"""Command-line options: each defined once in `clip_cir.params`, the same abbreviation rules in
every parser, --resume reading the run's config through the parser (overridable options change,
others are refused), quick --help, and the shared checks (FAISS, combining functions)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO, stage2_options

import clip_cir
from clip_cir import params
from clip_cir.config import portable_config
from clip_cir.errors import CIRError

PACKAGE = REPO / "clip_cir"


# ---- one definition per option ------------------------------------------------------------------------

def _add_argument_calls() -> list[tuple[str, int, list[str]]]:
    """(file, line, option names) of every `*.add_argument(...)` call in clip_cir/. A name that is
    not a string literal (a constant) is recorded as its source text."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
                names = [a.value if isinstance(a, ast.Constant) else ast.get_source_segment(source, a)
                         for a in node.args]
                calls.append((path.relative_to(REPO).as_posix(), node.lineno, names))
    return calls


def test_every_option_is_added_once_and_only_in_params():
    calls = _add_argument_calls()
    assert len(calls) > 50  # the walk finds the calls (a broken walk would pass vacuously)
    outside = [f"{file}:{line} {names}" for file, line, names in calls if not file.startswith("clip_cir/params/")]
    assert not outside, f"options defined outside clip_cir/params/: {outside}"
    seen: dict[str, str] = {}
    twice = []
    for file, line, names in calls:
        for name in names:
            if name in seen:
                twice.append(f"{name}: {seen[name]} and {file}:{line}")
            seen[name] = f"{file}:{line}"
    assert not twice, "options added by more than one add_argument call (give the function a parameter):\n" + \
        "\n".join(twice)
    assert {"--batch-size", "--seed", "--output-dir", "--num-workers", "run_dir"} <= set(seen)


def test_an_option_shared_by_programs_keeps_each_programs_default():
    """--batch-size and --num-workers come from one definition each, with each program's default."""
    data = ["--dataset", "cirr", "--data-root", "d"]
    assert params.stage1_parser().parse_args(data).batch_size == 128
    assert params.stage2_parser().parse_args(data).batch_size == 4096
    assert params.cli_parser().parse_args(["eval", *data]).batch_size == 256
    assert params.quickstart_parser().parse_args([]).num_workers == 1
    assert params.stage1_parser().parse_args(data).num_workers is None


# ---- abbreviations: accepted by every parser, the same as the full name ----------------------------

DATA = ["--dataset", "cirr", "--data-root", "d"]
ABBREVIATIONS = {
    "finetune": (params.stage1_parser, DATA, "--epochs", "--epo", "7"),
    "train-combiner": (params.stage2_parser, DATA, "--hidden-dim", "--hidden", "64"),
    "pretrain": (params.pretrain_parser, ["--train-data", "t.csv"], "--val-fraction", "--val-f", "0.25"),
    "quickstart": (params.quickstart_parser, [], "--stage2-epochs", "--stage2", "3"),
    "report": (params.report_parser, ["RUN"], "--queries", "--que", "2"),
    "demo": (params.demo_parser, DATA, "--max-upload-mb", "--max-up", "2.5"),
    "eval": (params.cli_parser, ["eval", *DATA], "--target-ratio", "--target", "1.5"),
    "rank": (params.cli_parser, ["rank", *DATA, "--output", "o.json"], "--top-k", "--top", "5"),
    "submit-cirr": (params.cli_parser, ["submit-cirr", "--data-root", "d", "--name", "n", "--output-dir", "o"],
                    "--faiss-nprobe", "--faiss-n", "3"),
    "score-circo": (params.cli_parser, ["score-circo", "--data-root", "d", "--submission", "s"],
                    "--split", "--sp", "test"),
    "synth": (params.cli_parser, ["synth", "--root", "r"], "--circo-distractors", "--circo-d", "9"),
    "export": (params.cli_parser, ["export", "--output-dir", "o"], "--push-to-hub", "--push", "org/name"),
}


@pytest.mark.parametrize("name", sorted(ABBREVIATIONS))
def test_every_parser_takes_an_unambiguous_abbreviation_as_the_full_option(name):
    build, base, option, abbreviation, value = ABBREVIATIONS[name]
    full = vars(build().parse_args([*base, option, value]))
    short = vars(build().parse_args([*base, abbreviation, value]))
    default = vars(build().parse_args(base))
    dest = option[2:].replace("-", "_")
    assert short == full and full[dest] != default[dest]


# ---- --resume ------------------------------------------------------------------------------------------

def _saved_run(tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    """A run directory whose config.json is what stage 2 writes for these arguments."""
    run = tmp_path / "run"
    run.mkdir()
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    args = params.stage2_parser().parse_args(["--dataset", "cirr", "--data-root", str(data), "--lr", "0.001",
                                              "--epochs", "5", "--experiment-name", "run", *extra])
    config = {"program": "stage2", **portable_config(vars(args)), "run_dir": str(run)}
    (run / "config.json").write_text(json.dumps(config))
    return run, config


def _resume(*argv: str):
    return params.parse_with_resume(partial(params.stage2_parser, "prog"), list(argv))


def test_resume_takes_the_runs_settings_with_their_types(tmp_path):
    run, config = _saved_run(tmp_path, "--hidden-dim", "48", "--fashioniq-categories", "dress", "--cpu")
    args = _resume("--resume", str(run))
    assert (args.dataset, args.lr, args.epochs, args.hidden_dim) == ("cirr", 0.001, 5, 48)
    assert (args.fashioniq_categories, args.cpu) == (["dress"], True)
    settings = {k: v for k, v in portable_config(vars(args)).items() if k != "resume"}
    assert settings == {k: v for k, v in config.items() if k not in ("program", "run_dir", "resume")}
    assert args.data_root == Path(config["data_root"])  # a Path, as the option's type makes it
    assert args.experiment_name == "run" and args.resume == run


def test_resume_with_an_abbreviated_overridable_option_changes_it(tmp_path):
    run, config = _saved_run(tmp_path)
    args = _resume("--resume", str(run), "--epoch", "20", "--no-prog")
    assert (args.epochs, args.no_progress) == (20, True)
    assert config["epochs"] == 5 and args.lr == 0.001


def test_resume_accepts_the_runs_own_settings_repeated(tmp_path):
    run, config = _saved_run(tmp_path)
    args = _resume("--resume", str(run), "--dataset", "cirr", "--data-root", config["data_root"], "--lr", "1e-3")
    assert args.lr == 0.001


@pytest.mark.parametrize("given, message", [
    (["--lr", "0.5"], "--lr 0.5 differs from the resumed run's 0.001"),
    (["--weight", "0.5"], "--weight-decay 0.5 differs from the resumed run's 0.0"),  # abbreviated
    (["--dataset", "fashioniq"], "--dataset fashioniq differs from the resumed run's 'cirr'"),
])
def test_resume_refuses_a_setting_that_differs_from_the_runs(tmp_path, given, message):
    run, _ = _saved_run(tmp_path)
    with pytest.raises(CIRError) as error:
        _resume("--resume", str(run), *given)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert "only --epochs, --num-workers" in str(error.value)


def test_resume_from_a_config_without_a_required_setting_is_an_error(tmp_path):
    run, config = _saved_run(tmp_path)
    del config["dataset"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CIRError, match="the following arguments are required: --dataset"):
        _resume("--resume", str(run))
    assert _resume("--resume", str(run), "--dataset", "circo").dataset == "circo"


def test_without_resume_argparse_reports_missing_required_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _resume("--epochs", "3")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.splitlines()[-1] == "prog: error: the following arguments are required: --dataset, --data-root"
    assert err.startswith("usage: prog [-h] --dataset DATASET --data-root")


def test_resumed_run_continues_to_the_abbreviated_epoch_count_and_refuses_a_new_lr(synth_root, tmp_path, capsys):
    """End to end: a run (started through the Python API) resumed on the command line: `--resume RUN
    --epoch 2` trains epoch 2; `--resume RUN --lr X` stops, one line."""
    from clip_cir.apps.train import train_combiner_main

    clip_cir.train_combiner(**stage2_options(synth_root, tmp_path, "run", epochs=1))
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert (config["program"], config["experiment_name"], config["run_dir"]) == ("stage2", "run", str(run.resolve()))
    train_combiner_main(["--resume", str(run), "--epoch", "2", "--no-progress"])
    assert list(pd.read_csv(run / "train_metrics.csv")["epoch"]) == [1, 2]
    assert json.loads((run / "config.json").read_text()) == {**config, "epochs": 2}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_combiner_main(["--resume", str(run), "--epochs", "3", "--lr", "0.5"], prog="stage2/train_combiner.py")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err.startswith("stage2/train_combiner.py: error: --lr 0.5 differs from the resumed run's 0.001")
    assert list(pd.read_csv(run / "train_metrics.csv")["epoch"]) == [1, 2]


# ---- quick --help, shared checks -----------------------------------------------------------------------

def test_help_of_every_command_loads_no_torch():
    commands = [[], ["eval"], ["demo"], ["report"], ["finetune"], ["train-combiner"], ["pretrain"], ["quickstart"]]
    script = ("import sys\nfrom clip_cir.apps.cli import main\n"
              f"for command in {commands!r}:\n"
              "    try:\n        main([*command, '--help'])\n    except SystemExit:\n        pass\n"
              "print('torch loaded' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stderr.strip().splitlines()[-1] == "no torch", result.stderr
    assert result.stdout.count("usage: clip-cir") == len(commands)
    assert "usage: clip-cir finetune [-h] --dataset" in result.stdout


@pytest.mark.parametrize("command", [["eval"], ["demo", "--port", "0"]], ids=["eval", "demo"])
def test_missing_faiss_stops_eval_and_demo_with_one_line(cli, synth_root, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    result = cli(*command, "--dataset", "cirr", "--data-root", synth_root, "--model", "cir-tiny-vit",
                 "--search", "faiss")
    assert result.code == 2
    assert result.err.strip() == "clip-cir: error: the FAISS back-end needs faiss-cpu: pip install 'clip-cir[faiss]'"


def test_combining_names_are_the_registrys_and_image_ignores_the_caption():
    from clip_cir.constants import COMBINING, ZERO_SHOT_METHODS
    from clip_cir.models.combiner import COMBINING_FUNCTIONS
    from clip_cir.models.zero_shot import METHODS

    # The training-free functions, then the pseudo-word methods (which need a trained φ).
    assert (*COMBINING_FUNCTIONS, *METHODS) == COMBINING and METHODS == ZERO_SHOT_METHODS
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    image_only, _ = COMBINING_FUNCTIONS["image"]
    element_wise_sum, _ = COMBINING_FUNCTIONS["sum"]
    assert torch.allclose(image_only(image, text), image / image.norm(dim=-1, keepdim=True))
    assert torch.allclose(element_wise_sum(image, text), (image + text) / (image + text).norm(dim=-1, keepdim=True))
    assert params.cli_parser().parse_args(["eval", *DATA, "--combining", "image"]).combining == "image"


def test_slerp_alpha_parses_into_the_combining_settings_with_their_default():
    from clip_cir.config import CombiningConfig, RankingConfig
    from clip_cir.models.combiner import Slerp

    commands = (["eval", *DATA], ["rank", *DATA, "--output", "r.json"], ["demo", *DATA],
                ["submit-cirr", "--data-root", "d", "--name", "n", "--output-dir", "s"])
    for command in commands:  # every command that takes --combining
        args = params.cli_parser().parse_args([*command, "--combining", "slerp"])
        assert args.slerp_alpha == CombiningConfig.slerp_alpha == RankingConfig().combining.slerp_alpha == 0.8
    given = params.ranking_settings(params.cli_parser().parse_args(["eval", *DATA, "--combining", "slerp",
                                                                    "--slerp-alpha", "0.25"]))
    assert (given.combining.combining, given.combining.slerp_alpha) == ("slerp", 0.25)
    from clip_cir.models.compositors.loading import load_combining

    assert load_combining(given.combining, clip=None) == (Slerp(0.25), "slerp (α=0.25)")  # no CLIP needed
    with pytest.raises(CIRError, match=r"^--slerp-alpha must be between 0 .* got -0\.5$"):
        params.ranking_settings(params.cli_parser().parse_args(["eval", *DATA, "--slerp-alpha", "-0.5"]))


@pytest.mark.parametrize("combining, name", [("sum", "element-wise sum"), ("image", "image only (caption ignored)"),
                                             ("slerp", "slerp (α=0.3)")])
def test_demo_from_its_command_line_uses_and_names_the_registrys_function(synth_root, combining, name):
    """The demo's combining function and the name its page shows come from the one registry
    (slerp with the --slerp-alpha given)."""
    pytest.importorskip("flask")
    from clip_cir.apps.demo.app import _build_app
    from clip_cir.models.combiner import COMBINING_FUNCTIONS

    args = params.demo_parser().parse_args(["--dataset", "cirr", "--data-root", str(synth_root), "--model",
                                            "cir-tiny-vit", "--num-workers", "0", "--combining", combining,
                                            "--slerp-alpha", "0.3"])
    client = _build_app(args).test_client()
    assert client.get("/api/info").get_json()["combining"] == name
    reference = client.get("/api/gallery?per_page=1").get_json()["items"][0]["name"]
    red, blue = (client.post("/api/search", json={"reference": reference, "caption": caption, "k": 5}).get_json()
                 for caption in ("is red", "has a small blue triangle"))
    # Only the image-only function ignores the caption: two captions, one ranking with the same scores.
    assert (red["results"] == blue["results"]) == (COMBINING_FUNCTIONS[combining][0] is COMBINING_FUNCTIONS["image"][0])


def test_every_clip_cir_subcommand_has_a_command_or_a_program(capsys):
    import re

    from clip_cir.apps.cli import COMMANDS, main

    with pytest.raises(SystemExit):
        params.cli_parser().parse_args(["no-such-command"])
    listed = set(re.findall(r"'([a-z-]+)'", capsys.readouterr().err.split("choose from")[1]))
    assert listed == set(COMMANDS) | set(params.PROGRAMS) and not set(COMMANDS) & set(params.PROGRAMS)
    with pytest.raises(SystemExit) as exit_info:
        main(["-v", "finetune"])  # a program's name after clip-cir's own option: one usage error, no traceback
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        "clip-cir: error: finetune must come first: clip-cir finetune [options]"
