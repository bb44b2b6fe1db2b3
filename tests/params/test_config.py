"""Typed settings: each default lives once (the parsers read theirs from the settings classes),
flat options round-trip through config.json, unknown names are refused, and the CUDA speed
settings the training programs apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clip_cir import params
from clip_cir.config import (
    AttributesConfig,
    CaptionDataConfig,
    PretrainConfig,
    RankingConfig,
    Stage1Config,
    Stage2Config,
    TrainingConfig,
    ZeroShotConfig,
    portable_config,
    read_run_config,
)
from clip_cir.errors import CIRError
from clip_cir.params.attributes import attributes_parser

REQUIRED = {Stage1Config: ["--dataset", "cirr", "--data-root", "DATA"],
            Stage2Config: ["--dataset", "cirr", "--data-root", "DATA"],
            PretrainConfig: ["--train-data", "captions.csv"],
            ZeroShotConfig: ["--gallery-dir", "PHOTOS"], AttributesConfig: ["--catalogue", "CATALOGUE"]}
GIVEN = {PretrainConfig: {"train_data": "captions.csv"}, ZeroShotConfig: {"gallery_dir": "PHOTOS"},
         AttributesConfig: {"catalogue": Path("CATALOGUE")}}
PARSERS = {Stage1Config: params.stage1_parser, Stage2Config: params.stage2_parser,
           PretrainConfig: params.pretrain_parser, ZeroShotConfig: params.zero_shot_parser,
           AttributesConfig: attributes_parser}


@pytest.mark.parametrize("cls", list(REQUIRED))
def test_a_programs_parser_defaults_are_its_settings_defaults(cls):
    args = PARSERS[cls]().parse_args(REQUIRED[cls])
    from_parser = params.program_settings(cls, args)
    given = GIVEN.get(cls, {"dataset": "cirr", "data_root": "DATA"})
    assert from_parser == cls.from_options(given)
    assert sorted(vars(args)) == sorted(cls.option_names())  # every option is a setting, and back


def test_program_defaults_are_the_published_ones():
    assert (Stage1Config().training.lr, Stage1Config().training.batch_size, Stage1Config().training.epochs) == \
        (2e-6, 128, 100)
    assert Stage1Config().training.weight_decay == 0.01 and Stage1Config().encoder == "text"
    s2 = Stage2Config().training
    assert (s2.lr, s2.batch_size, s2.epochs, s2.validation_frequency) == (2e-5, 4096, 300, 3)
    assert PretrainConfig().data == CaptionDataConfig() and PretrainConfig().data.csv_separator == "\t"


def test_ranking_settings_from_an_eval_command_line():
    args = params.cli_parser().parse_args(["eval", "--dataset", "cirr", "--data-root", "DATA", "--batch-size", "8",
                                           "--search", "faiss", "--output", "m.json"])
    settings = params.ranking_settings(args)
    assert settings == RankingConfig.from_options({"dataset": "cirr", "data_root": "DATA", "batch_size": 8,
                                                   "search": "faiss"})
    assert settings.device.mixed_precision == "no" and settings.encode.batch_size == 8
    assert settings.search.search == "faiss" and settings.combining.combining == "sum"


def test_flat_options_round_trip_through_json(tmp_path):
    config = Stage1Config.from_options({"dataset": "fashioniq", "data_root": tmp_path, "output_dir": tmp_path,
                                        "fashioniq_categories": ["dress"], "lr": 3, "encoder": "both"})
    assert config.training.lr == 3.0 and isinstance(config.training.lr, float)
    assert config.data.fashioniq_categories == ("dress",) and config.data.data_root == tmp_path
    saved = json.loads(json.dumps(portable_config(config.to_options())))
    assert saved["data_root"] == str(tmp_path.resolve()) and saved["fashioniq_categories"] == ["dress"]
    assert Stage1Config.from_options(saved) == config


def test_options_may_override_a_base_and_sections_may_be_given_whole():
    base = Stage2Config.from_options({"epochs": 7, "hidden_dim": 5})
    changed = Stage2Config.from_options({"lr": 0.5}, base=base)
    assert (changed.training.epochs, changed.training.lr, changed.hidden_dim) == (7, 0.5, 5)
    training = TrainingConfig(epochs=2)
    assert Stage2Config.from_options({"training": training}).training is training
    # A section named like one of its options: the option goes into the section.
    assert Stage1Config.from_options({"model": "RN50"}).model.model == "RN50"
    # A path where a setting takes a string (a checkpoint or run folder as `pretrained`).
    assert Stage2Config.from_options({"pretrained": Path("runs/s1")}).model.pretrained == "runs/s1"


def test_unknown_and_misspelt_options_are_refused():
    with pytest.raises(CIRError, match=r"unknown option for Stage1Config: lrr \(known: accum_steps"):
        Stage1Config.from_options({"lrr": 1e-3})
    with pytest.raises(CIRError, match="unknown option for Stage2Config: encoder"):
        Stage2Config.from_options({"encoder": "both"})  # a stage-1 setting


@pytest.mark.parametrize("options,message", [
    ({"epochs": 0}, "--epochs must be positive, got 0"),
    ({"validation_frequency": -1}, "--validation-frequency must be positive, got -1"),
    ({"warmup": -2}, "--weight-decay and --warmup must not be negative"),
    ({"batch_size": 30, "accum_steps": 4}, "--batch-size 30 over 1 process(es) does not split into --accum-steps 4"),
    ({"num_workers": -1}, "--num-workers must not be negative, got -1"),
])
def test_settings_check_themselves(options, message):
    with pytest.raises(CIRError) as error:
        Stage1Config.from_options(options).check()
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("options,message", [
    ({"validation_schedule": "sometimes"}, "--validation-schedule must be one of published, every-nth-and-last, got "
                                           "'sometimes'"),
    ({"lr_scheduler": "cos"}, "--lr-scheduler must be one of const, cosine, got 'cos'"),
    ({"encoder": "txt"}, "--encoder must be one of text, image, both, got 'txt'"),
    ({"mixed_precision": "fp32"}, "--mixed-precision must be one of no, fp16, bf16, got 'fp32'"),
    ({"pixel_cache": "yes"}, "--pixel-cache must be one of auto, on, off, got 'yes'"),
    ({"epochs": 3.0}, "--epochs takes an integer, got 3.0"),
    ({"deterministic": 1}, "--deterministic takes True or False, got 1"),
    ({"data_root": 5}, "--data-root takes a path, got 5"),
    ({"output_dir": None}, "--output-dir takes a path, got None"),
    ({"fashioniq_categories": {"dress"}}, "--fashioniq-categories takes a list of strings, got {'dress'}"),
])
def test_values_of_the_wrong_kind_or_outside_the_choices_are_refused_when_given(options, message):
    with pytest.raises(CIRError) as error:
        Stage1Config.from_options(options)
    assert str(error.value) == message


def test_one_string_where_a_list_goes_is_a_list_of_one():
    assert Stage1Config.from_options({"fashioniq_categories": "dress"}).data.fashioniq_categories == ("dress",)
    assert Stage1Config.from_options({"mixed_precision": None}).device.mixed_precision is None


def test_stage2_refuses_settings_that_do_not_apply_to_it():
    with pytest.raises(CIRError, match="unknown options for Stage2Config: accum_steps, compile"):
        Stage2Config.from_options({"compile": True, "accum_steps": 2})
    with pytest.raises(CIRError, match="--hidden-dim must be positive, got 0"):
        Stage2Config.from_options({"hidden_dim": 0}).check()


def test_a_run_saved_before_the_schedule_option_resumes_with_the_schedule_it_ran(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"program": "stage2", "epochs": 4}))
    assert read_run_config(tmp_path)["validation_schedule"] == "every-nth-and-last"
    (tmp_path / "config.json").write_text(json.dumps({"validation_schedule": "published"}))
    assert read_run_config(tmp_path)["validation_schedule"] == "published"
    with pytest.raises(CIRError, match=r"config.json: not found; --resume takes a run directory"):
        read_run_config(tmp_path / "nothing")


@pytest.fixture
def cuda_flags():
    from clip_cir.training.run import CUDA_FLAGS as names

    before = [getattr(module, name) for module, name in names]
    yield lambda: [getattr(module, name) for module, name in names]
    for (module, name), value in zip(names, before):
        setattr(module, name, value)


def test_cuda_speed_settings_on_cuda_only_and_restored(cuda_flags):
    from clip_cir.training.run import TORCH_DEFAULTS, cuda_speed, set_cuda_speed

    before = cuda_flags()
    assert before == list(TORCH_DEFAULTS)  # what a fresh process (and clip-cir eval) computes with
    set_cuda_speed(torch.device("cpu"), deterministic=False)
    assert cuda_flags() == before
    with cuda_speed(torch.device("cuda", 0), deterministic=False):  # flags only: no GPU needed
        assert cuda_flags() == [True, False, True, True]  # benchmark, deterministic, cuDNN TF32, matmul TF32
    assert cuda_flags() == before
    with cuda_speed(torch.device("cuda"), deterministic=True):
        assert cuda_flags() == [False, True, False, False]
    assert cuda_flags() == before


def test_validation_runs_with_torchs_defaults(cuda_flags, tmp_path):
    """Training may use TF32 and benchmark mode; validation, whose numbers pick the best
    checkpoint, runs as `clip-cir eval` does."""
    from helpers import ScriptedStage

    from clip_cir.training.loop import fit
    from clip_cir.training.optim import LRSchedule
    from clip_cir.training.run import Run

    seen = []

    class Recording(ScriptedStage):
        def validate(self, epoch):
            seen.append(cuda_flags())
            return super().validate(epoch)

    from accelerate import Accelerator

    from clip_cir.training.run import TORCH_DEFAULTS, set_cuda_speed

    set_cuda_speed(torch.device("cuda"), deterministic=False)  # as a run's training epochs
    fit(Accelerator(cpu=True), Run(path=Path(tmp_path), is_main=True), Recording([1.0, 2.0]),
        TrainingConfig(epochs=2), LRSchedule("const", 0.1, 0, 4), progress=False)
    assert seen == [list(TORCH_DEFAULTS)] * 2 and cuda_flags() == [True, False, True, True]


def test_resume_settings_from_python(tmp_path, monkeypatch):
    """`resume=RUN` takes the run's settings; a relative path that names the run's own folder is
    the same setting; another value of a setting that is not how-long-or-how is refused, whether
    given as an option or inside a settings object; a settings object of another program too."""
    from clip_cir.api import training_settings

    (tmp_path / "data").mkdir()
    run = tmp_path / "run1"
    run.mkdir()
    saved = Stage1Config.from_options({"dataset": "cirr", "data_root": tmp_path / "data", "lr": 0.25,
                                       "output_dir": tmp_path, "experiment_name": "run1"})
    (run / "config.json").write_text(json.dumps({"program": "stage1", **portable_config(saved.to_options())}))
    monkeypatch.chdir(tmp_path)
    settings = training_settings(Stage1Config, None, {"resume": run, "epochs": 9, "data_root": "data"})
    assert (settings.training.lr, settings.training.epochs, settings.data.dataset) == (0.25, 9, "cirr")
    assert settings.run.resume == run
    with pytest.raises(CIRError, match=r"--lr 0.5 differs from the resumed run's 0.25"):
        training_settings(Stage1Config, None, {"resume": run, "lr": 0.5})
    # A settings object that names only the run (the rest at their defaults) resumes it as saved.
    resumed = training_settings(Stage1Config, Stage1Config.from_options({"resume": run, "epochs": 9}), {})
    assert (resumed.training.lr, resumed.training.epochs, resumed.data.dataset) == (0.25, 9, "cirr")
    other = Stage1Config.from_options({"dataset": "fashioniq", "resume": run}, base=saved)
    with pytest.raises(CIRError, match=r"--dataset fashioniq differs from the resumed run's 'cirr'"):
        training_settings(Stage1Config, other, {})
    with pytest.raises(CIRError, match="these settings are a Stage1Config; this program takes a Stage2Config"):
        training_settings(Stage2Config, Stage1Config(), {})
