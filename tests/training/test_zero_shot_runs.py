"""`clip-cir zero-shot` end to end on a synthetic world: each method trains φ on a pretrained tiny
CLIP (pretrained here on the world's per-image captions: a random CLIP has no words to map images
to), its best checkpoint scores what its run recorded and beats an untrained φ on the validation
split, Pic2Word is compared with the zero-shot sum; on a nested folder of photos the program keeps
`last/` (no validation), `load_mapping` reads it, and a resumed run ends where an uninterrupted one
does; bad input is one line. The pieces are tested on fixed inputs in test_zero_shot_stage.py."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from helpers import REPO, command_line, ddp_launcher, read_weights, update_gaps

import clip_cir
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import selection_scores

WORLD = dict(n_train=300, n_val=100, n_test=10, size=64, seed=0, n_circo=0)
"""450 training images (those the 300 CIRR training triplets use), 100 validation queries."""
PRETRAIN = dict(epochs=4, batch_size=64, lr=5e-4, weight_decay=0.1, lr_scheduler="cosine", warmup=20)
RUNS = {
    "pic2word": dict(epochs=5, batch_size=64, lr=1e-3),
    "lincir": dict(epochs=6, batch_size=32, lr=1e-3),
    # SEARLE inverts every training image first (the slow part on a CPU): 64 of them, 30 steps each.
    "searle": dict(epochs=8, batch_size=32, lr=1e-3, oti_steps=30, image_list="IMAGES64"),
}
MARGIN = 3.0
"""Points of the selection score (mean of CIRR's seven recalls) by which each trained φ must beat
an untrained one (the measured scores: docs/benchmarks.md, "Zero-shot: no triplets")."""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A synthetic CIRR with 100 validation queries (`synth_root`'s 60 give recalls in steps of 1.7)."""
    from clip_cir.data.synthetic import generate

    root = tmp_path_factory.mktemp("zero-shot-world")
    generate(root, progress=False, **WORLD)
    return root


@pytest.fixture(scope="module")
def pretrained(world, tmp_path_factory) -> Path:
    """The tiny ViT CLIP pretrained on the CIRR images' titles, as the quickstart's first step."""
    with open(world / "pretrain_captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    titles = world / "cirr_titles.tsv"
    with open(titles, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t").writerows([rows[0]] + [r for r in rows[1:] if r[0].startswith("cirr_dataset/")])
    out = tmp_path_factory.mktemp("zero-shot-clip")
    clip_cir.pretrain(train_data=titles, model="cir-tiny-vit", output_dir=out, experiment_name="clip", seed=0,
                      num_workers=0, no_progress=True, **PRETRAIN)
    return out / "clip"


@pytest.fixture(scope="module")
def image_list(world, tmp_path_factory) -> Path:
    paths = sorted((world / "cirr_dataset" / "train").rglob("*.png"))[:64]
    listing = tmp_path_factory.mktemp("zero-shot-list") / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    return listing


@pytest.fixture(scope="module")
def runs(world, pretrained, image_list, tmp_path_factory) -> dict[str, clip_cir.TrainedRun]:
    out = tmp_path_factory.mktemp("zero-shot-runs")
    trained = {}
    for method, options in RUNS.items():
        options = {**options, **({"image_list": image_list} if "image_list" in options else {})}
        trained[method] = clip_cir.train_zero_shot(method=method, dataset="cirr", data_root=world,
                                                   pretrained=pretrained, output_dir=out, experiment_name=method,
                                                   num_workers=0, no_progress=True, **options)
    return trained


@pytest.fixture(scope="module")
def validation(world, pretrained):
    """(the pretrained CLIP, the features of the world's CIRR validation split), as `eval` computes them."""
    from clip_cir.data import load_splits
    from clip_cir.encoding.options import EncodeOptions
    from clip_cir.encoding.split_features import split_features
    from clip_cir.models.clip import load_clip

    clip = load_clip(None, str(pretrained))
    clip.model.eval()
    options = EncodeOptions(transform=clip.image_transform("targetpad", 1.25), progress=False)
    return clip, [split_features(clip, split, options) for split in load_splits("cirr", world, "val")]


def _scores(validation, combine) -> dict[str, float]:
    from clip_cir.evaluation.evaluate import metrics_from_features

    metrics = metrics_from_features(validation[1], combine)
    return {**metrics, **selection_scores(metrics)}


def _composer(clip, mapping):
    from clip_cir.models.zero_shot import ZeroShotComposer

    return ZeroShotComposer(clip, mapping.eval())


@pytest.mark.parametrize("method", list(RUNS))
def test_the_best_mapping_network_scores_what_its_run_recorded_and_beats_an_untrained_one(method, runs, validation):
    from clip_cir.models.zero_shot import PROMPT_TEMPLATES, load_mapping, mapping_for

    clip, _ = validation
    run = runs[method]
    recorded = json.loads((run.path / "best" / "phi.json").read_text())
    assert recorded["method"] == method and recorded["prompt_template"] == PROMPT_TEMPLATES[method]
    assert recorded["clip_model_name"] == "cir-tiny-vit" and recorded["stage"] == "zero-shot"
    mapping = load_mapping(run.path)  # the run directory means its best φ
    trained = _scores(validation, _composer(clip, mapping))
    for key, value in recorded["metrics"].items():
        assert trained[key] == pytest.approx(value, abs=1e-3), key
    assert run.best["score"] == pytest.approx(trained["score"], abs=1e-3) and run.best_checkpoint == run.path / "best"

    torch.manual_seed(0)
    untrained = _scores(validation, _composer(clip, mapping_for(method, clip)))
    with open(run.path / "validation_metrics.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in epochs] == list(range(RUNS[method]["epochs"] + 1))  # epoch 0: untrained
    print(f"{method}: score {trained['score']:.2f} (R@10 {trained['recall_at10']:.0f}), untrained "
          f"{untrained['score']:.2f} (R@10 {untrained['recall_at10']:.0f}); the run's own epoch 0: "
          f"{float(epochs[0]['score']):.2f}")
    assert trained["score"] > untrained["score"] + MARGIN
    assert trained["score"] > float(epochs[0]["score"]) + MARGIN


def test_pic2word_against_the_zero_shot_sum(runs, validation):
    """Pic2Word's φ against the element-wise sum of the same CLIP, on the same split (the measured
    scores: docs/benchmarks.md)."""
    from clip_cir.models.combiner import element_wise_sum
    from clip_cir.models.zero_shot import load_mapping

    clip, _ = validation
    summed = _scores(validation, element_wise_sum)
    pic2word = _scores(validation, _composer(clip, load_mapping(runs["pic2word"].path)))
    print(f"pic2word: score {pic2word['score']:.2f}, R@10 {pic2word['recall_at10']:.0f}; sum: score "
          f"{summed['score']:.2f}, R@10 {summed['recall_at10']:.0f}")
    assert pic2word["score"] > summed["score"] and pic2word["recall_at10"] > summed["recall_at10"]


def test_clip_cir_eval_of_the_run_directory_reproduces_its_best_validation(runs, cli, world, pretrained, tmp_path):
    out = tmp_path / "eval.json"
    result = cli("eval", "--dataset", "cirr", "--data-root", world, "--pretrained", pretrained, "--zero-shot",
                 runs["searle"].path, "--num-workers", "0", "--output", out)
    assert result.code == 0, result.err
    metrics = json.loads(out.read_text())
    recorded = json.loads((runs["searle"].path / "best" / "phi.json").read_text())["metrics"]
    assert {k: metrics[k] for k in metrics if k in recorded} == pytest.approx(
        {k: v for k, v in recorded.items() if k in metrics}, abs=1e-3)


def test_load_of_a_run_directory_composes_with_phi_or_with_the_function_named(runs, pretrained):
    """`clip_cir.load(RUN)` brings the run's φ; with `combining="image"` the run's CLIP with that
    function; `zero_shot=` with a function is refused in one line."""
    from clip_cir.models.combiner import image_only

    kwargs = dict(device="cpu", cache=False, progress=False)
    with_phi = clip_cir.load(runs["searle"].path, **kwargs)
    assert with_phi.combine.name == "searle" and str(runs["searle"].path) in with_phi.combining
    image = clip_cir.load(runs["searle"].path, combining="image", **kwargs)
    plain = clip_cir.load(pretrained, combining="image", **kwargs)
    assert image.combine is image_only and image.clip.source == plain.clip.source
    assert all(torch.equal(a, b) for a, b in zip(image.clip.model.state_dict().values(),
                                                  plain.clip.model.state_dict().values()))
    with pytest.raises(CIRError, match=r"^zero_shot gives the pseudo-word composition; combining may only name "
                                       r"its method \(pic2word, searle, lincir\), not 'image'$"):
        clip_cir.load(pretrained, zero_shot=runs["searle"].path, combining="image", **kwargs)


def test_clip_cir_report_plots_a_zero_shot_run(runs, cli, tmp_path):
    result = cli("report", runs["lincir"].path, "--output-dir", tmp_path)
    assert result.code == 0, result.err
    assert result.out.split() == [str(tmp_path / "training_loss.png"), str(tmp_path / "validation.png")]


def test_searle_keeps_its_inversion_tokens_in_the_run_directory(runs, image_list):
    chunk = runs["searle"].path / "oti" / "tokens_00000.safetensors"
    tokens = read_weights(chunk)["tokens"]
    assert tokens.shape == (64, 128)  # one 128-d token per listed image (one chunk of 32 batches holds them all)
    assert json.loads((runs["searle"].path / "config.json").read_text())["image_list"] == str(image_list)


# ---- a folder of photos, resume, bad input -----------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(world, tmp_path_factory) -> Path:
    """32 of the world's images in a nested folder (two levels), as a user's photos."""
    root = tmp_path_factory.mktemp("zero-shot-photos") / "PHOTOS"
    for i, path in enumerate(sorted((world / "cirr_dataset" / "train").rglob("*.png"))[:32]):
        target = root / ("holiday" if i % 2 else "garden/2024") / f"photo{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return root


def _photo_run(cli, photos: Path, pretrained: Path, out: Path, name: str, *extra: str):
    return cli("zero-shot", "--method", "pic2word", "--gallery-dir", photos, "--pretrained", pretrained,
               "--batch-size", "16", "--lr", "1e-3", "--output-dir", out, "--experiment-name", name,
               "--num-workers", "0", "--no-progress", *extra)


def test_a_nested_folder_of_photos_trains_keeps_last_and_resumes_as_uninterrupted(cli, photos, pretrained, tmp_path):
    from clip_cir.models.zero_shot import load_mapping

    result = _photo_run(cli, photos, pretrained, tmp_path, "photos", "--epochs", "2")
    assert result.code == 0, result.err
    run = tmp_path / "photos"
    assert "done (no validation data): the last checkpoint is in" in (run / "log.txt").read_text()
    assert (run / "last" / "phi.safetensors").is_file() and not (run / "best").exists()
    assert not (run / "validation_metrics.csv").exists()  # no benchmark: no validation
    with open(run / "train_metrics.csv", newline="") as f:
        assert [(r["epoch"], r["steps"]) for r in csv.DictReader(f)] == [("1", "2"), ("2", "2")]  # 32 photos / 16
    mapping = load_mapping(run)
    assert mapping.method == "pic2word" and mapping.prompt_template == "a photo of $ , {caption}"
    saved = read_weights(run / "last" / "phi.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in mapping.state_dict().items())
    assert json.loads((run / "config.json").read_text())["gallery_dir"] == str(photos)

    resumed = cli("zero-shot", "--resume", run, "--epochs", "3", "--no-progress")
    assert resumed.code == 0, resumed.err
    assert f"resuming {run} after epoch 2" in (run / "log.txt").read_text()
    with open(run / "train_metrics.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]
    straight = _photo_run(cli, photos, pretrained, tmp_path, "straight", "--epochs", "3")
    assert straight.code == 0, straight.err
    a, b = read_weights(run / "last" / "phi.safetensors"), read_weights(tmp_path / "straight" / "last" /
                                                                         "phi.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["fc_out.weight"], saved["fc_out.weight"])


def test_a_mixed_precision_run_with_micro_batches_keeps_a_float32_mapping_network(photos, pretrained, tmp_path):
    """bf16 autocast (in a process of its own: Accelerate's precision is set once per process)."""
    options = dict(method="pic2word", gallery_dir=photos, pretrained=pretrained, epochs=1, batch_size=16, cpu=True,
                   mixed_precision="bf16", accum_steps=2, output_dir=tmp_path, experiment_name="bf16", num_workers=0,
                   no_progress=True)
    result = subprocess.run([sys.executable, str(REPO / "zero_shot" / "train_mapping.py"), *command_line(options)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mixed precision: bf16" in (tmp_path / "bf16" / "log.txt").read_text()
    weights = read_weights(tmp_path / "bf16" / "last" / "phi.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())


@pytest.mark.parametrize("method", ["pic2word", "searle"])
def test_two_processes_train_as_one_with_the_global_batch(method, photos, pretrained, tmp_path):
    """DDP (2 CPU processes of 8, the second also in 2 micro-batches) == one process with the
    batch of 16: Pic2Word's contrastive loss and SEARLE's distillation see every process's rows;
    SEARLE's inversion is shared out batch by batch. φ without dropout, so the runs can agree."""
    from clip_cir.models.clip import load_clip
    from clip_cir.models.zero_shot import mapping_for
    from clip_cir.training.run import seed_everything

    concepts = tmp_path / "concepts.txt"
    concepts.write_text("star\ncircle\nsquare\nred\nblue\ngreen\n", encoding="utf-8")
    searle = dict(concepts=concepts, oti_steps=3, oti_batch_size=16, oti_top_k=3) if method == "searle" else {}
    common = dict(method=method, gallery_dir=photos, pretrained=pretrained, epochs=2, batch_size=16, lr=1e-3,
                  phi_dropout=0.0, cpu=True, output_dir=tmp_path, num_workers=0, no_progress=True, **searle)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, processes, extra in (("one", 1, {}), ("two", 2, {"accum_steps": 2})):
        cmd = [sys.executable, *ddp_launcher(processes), str(REPO / "zero_shot" / "train_mapping.py"),
               *command_line({**common, **extra, "experiment_name": name})]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"processes: {processes} |" in result.stderr
    one, two = (read_weights(tmp_path / name / "last" / "phi.safetensors") for name in ("one", "two"))
    seed_everything(0)  # the start-up's order: seed, CLIP, then φ
    start = mapping_for(method, load_clip(None, str(pretrained)), dropout=0.0).state_dict()
    # 4 AdamW steps of lr 1e-3 move a weight by at most about 4e-3: `start` is the runs' start.
    assert max((one[k] - start[k]).abs().max().item() for k in one) < 5e-3
    if method == "searle":
        assert torch.equal(read_weights(tmp_path / "one" / "oti" / "tokens_00000.safetensors")["tokens"],
                           read_weights(tmp_path / "two" / "oti" / "tokens_00000.safetensors")["tokens"])
    per_tensor, overall = update_gaps(one, two, start)
    assert per_tensor < 0.05 and overall < 0.01, (per_tensor, overall)


@pytest.fixture(scope="module")
def unpooled_model(tmp_path_factory) -> str:
    """A tiny CLIP config whose text tower returns every token's feature (pool type `none`):
    no one caption feature, so no pseudo-word query."""
    config = json.loads((Path(clip_cir.__file__).parent / "models" / "configs" / "cir-tiny-vit.json").read_text())
    config["text_cfg"]["pool_type"] = "none"
    path = tmp_path_factory.mktemp("configs") / "cir-test-unpooled.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return "cir-test-unpooled"


def _bad_inputs(photos: Path, tmp: Path) -> list[tuple[list, str]]:
    empty = tmp / "empty"
    (empty / "sub").mkdir(parents=True)
    blank = tmp / "blank.txt"
    blank.write_text("\n\n", encoding="utf-8")
    table = tmp / "captions.csv"
    table.write_text("id,text\n1,a red car\n", encoding="utf-8")
    listing = tmp / "images.txt"
    listing.write_text("photo.png\n", encoding="utf-8")
    return [
        (["--gallery-dir", empty], f"{empty.absolute()}: no images"),
        (["--method", "lincir", "--captions", blank], f"{blank}: no captions"),
        (["--method", "lincir", "--captions", table], f"{table}: a table of captions needs --caption-column NAME"),
        (["--image-list", listing], f"{tmp / 'photo.png'}: image 'photo.png' listed in images.txt is missing on disk"),
        (["--gallery-dir", photos, "--prompt-template", "a photo of {caption}"],
         "prompt template 'a photo of {caption}' has no '$'"),
        (["--captions", blank], "--method pic2word trains on images: give --gallery-dir PHOTOS"),
        (["--method", "lincir", "--gallery-dir", photos], "--method lincir trains on captions alone: --gallery-dir"),
        (["--method", "searle", "--gallery-dir", photos], "--method searle needs concept words"),
    ]


def test_bad_input_is_one_line(cli, photos, pretrained, unpooled_model, tmp_path):
    common = ["--output-dir", tmp_path / "runs", "--num-workers", "0", "--no-progress", "--batch-size", "1"]
    cases = _bad_inputs(photos, tmp_path) + [
        (["--gallery-dir", photos, "--model", unpooled_model],
         "pseudo-words are not available for text towers pooling 'none'")]
    for argv, message in cases:
        model = [] if "--model" in argv else ["--pretrained", pretrained]
        result = cli("zero-shot", *argv, *model, *common)
        assert result.code == 2 and "Traceback" not in result.err, (argv, result.err[-2000:])
        errors = [line for line in result.err.splitlines() if line.startswith("clip-cir zero-shot: error: ")]
        assert len(errors) == 1 and result.err.strip().splitlines()[-1] == errors[0], (argv, result.err[-2000:])
        assert message in errors[0], (message, errors[0])
