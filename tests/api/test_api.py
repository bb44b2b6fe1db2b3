"""The Python API (`clip_cir.load`, `encode_images`, `compose`, `index`, `search`) against
independent computation: `clip-cir eval`'s metrics and `clip-cir rank`'s rankings of the same
runs, evaluation's own image encoding, and the README's example run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, install_in_hub_cache
from PIL import Image

import clip_cir
from clip_cir.data import load_splits
from clip_cir.errors import CIRError

RECALL_KS = (1, 5, 10, 50)
SUBSET_KS = (1, 2, 3)


@pytest.fixture(scope="module")
def val(synth_root):
    """Synthetic CIRR val: 60 queries over a 180-image gallery, reference removed from its ranking."""
    return load_splits("cirr", synth_root, "val")[0]


@pytest.fixture(scope="module")
def stage1(tiny_runs):
    return clip_cir.load(tiny_runs["stage1"], cache=False, progress=False)


@pytest.fixture(scope="module")
def photos(synth_root, tmp_path_factory) -> Path:
    """A folder of 14 photos, some in a sub-folder, as a shop would have them."""
    root = tmp_path_factory.mktemp("shop") / "photos"
    (root / "more").mkdir(parents=True)
    files = sorted((synth_root / "cirr_dataset" / "dev").glob("*.png"))[:14]
    for i, file in enumerate(files):
        with Image.open(file) as image:
            if i < 2:
                image.convert("RGB").save(root / f"{'ab'[i]}.jpg", quality=95)
            else:
                image.save(root / "more" / file.name)
    return root


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message, message
    return message


# --- the README's example, as written ------------------------------------------------------------------


def readme_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_example_runs_as_written(tiny_runs, photos, monkeypatch):
    """The code block of README.md's "Python API" section, unchanged, in a folder that has its
    paths: runs/cirr-stage2 (the tiny stage-2 run) and photos/ (a.jpg, b.jpg, more/*.png)."""
    code = readme_example()
    assert 'clip_cir.load("runs/cirr-stage2")' in code and 'model.index("photos/")' in code
    work = photos.parent
    (work / "runs").mkdir(exist_ok=True)
    if not (work / "runs" / "cirr-stage2").exists():
        (work / "runs" / "cirr-stage2").symlink_to(tiny_runs["stage2"])
    monkeypatch.chdir(work)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)

    model, feats, query, gallery, hits = (namespace[n] for n in ("model", "feats", "query", "gallery", "hits"))
    assert "Combiner" in model.combining
    assert feats.shape == (2, model.embed_dim) and query.shape == (1, model.embed_dim)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(query.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert len(gallery) == 14 and "a.jpg" in gallery.names and "more/" + sorted(os.listdir("photos/more"))[0] \
        in gallery.names
    # The hits: the query against every other photo, best first (the reference left out).
    others = [n for n in gallery.names if n != "a.jpg"]
    scores = (query @ model.encode_images([photos / n for n in others]).T)[0]
    order = scores.argsort(descending=True)[:10].tolist()
    assert [name for name, _ in hits] == [others[i] for i in order]
    assert [score for _, score in hits] == pytest.approx(scores[order].tolist(), abs=1e-5)


# --- equality with clip-cir eval and rank ---------------------------------------------------------------


def _recalls(ranked_names: list[list[str]], split) -> dict[str, float]:
    """Recall@K and Recall_subset@K in percent, from full rankings (reference already removed)."""
    n = len(split.queries)
    metrics = {}
    for k in RECALL_KS:
        metrics[f"recall_at{k}"] = 100 * sum(q.target in names[:k] for q, names in zip(split.queries, ranked_names)) / n
    for k in SUBSET_KS:
        hits = 0
        for q, names in zip(split.queries, ranked_names):
            members = set(q.members) - {q.reference}
            hits += q.target in [name for name in names if name in members][:k]
        metrics[f"recall_subset_at{k}"] = 100 * hits / n
    metrics["recall_avg"] = (metrics["recall_at5"] + metrics["recall_subset_at1"]) / 2
    return metrics


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_api_rankings_give_evals_recalls_and_ranks_scores(stage, tiny_runs, synth_root, val, cli, tmp_path):
    """Every CIRR val query composed and searched through the API (stage 1: element-wise sum;
    stage 2: the run's Combiner on its stage-1 CLIP), with the API computing every feature itself
    (no cache): Recall@K and Recall_subset@K computed here equal `clip-cir eval`'s metrics.json
    exactly (its 4 decimals), and the top 10 equal `clip-cir rank`'s, scores to its 6 decimals."""
    model_args = ["--pretrained", tiny_runs["stage1"]]
    if stage == "stage2":
        model_args += ["--combiner", tiny_runs["stage2"]]
    common = ["--dataset", "cirr", "--data-root", synth_root, "--cache-dir", tmp_path / "cache", "--num-workers", "0"]
    result = cli("eval", *common, *model_args, "--output", tmp_path / "metrics.json")
    assert result.code == 0, result.err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    result = cli("rank", *common, *model_args, "--split", "val", "--top-k", "10", "--output", tmp_path / "ranks.json")
    assert result.code == 0, result.err
    ranks = {q["qid"]: q["ranking"] for q in json.loads((tmp_path / "ranks.json").read_text())["queries"]}

    model = clip_cir.load(tiny_runs[stage], cache=False, progress=False)
    assert ("Combiner" in model.combining) == (stage == "stage2")
    gallery = model.index(dict(val.gallery))
    ranked = []
    for query in val.queries:
        hits = gallery.search(val.gallery[query.reference], query.eval_caption, k=len(gallery))
        assert len(hits) == len(gallery) - 1 and query.reference not in {name for name, _ in hits}
        ranked.append([name for name, _ in hits])
        expected = ranks[query.qid]
        assert [name for name, _ in hits[:10]] == [hit["name"] for hit in expected]
        assert [score for _, score in hits[:10]] == pytest.approx([hit["score"] for hit in expected], abs=2e-6)
    ours = {key: round(value, 4) for key, value in _recalls(ranked, val).items()}
    assert ours == {key: metrics[key] for key in ours}
    assert 0 < ours["recall_at10"] < 100


def test_encode_images_of_paths_pil_and_tensors_equal_evaluations_features(stage1, val, tmp_path):
    """The gallery as evaluation encodes it (`split_features`, the function `clip-cir eval` runs,
    with eval's default options) against the API given the same files as paths, as PIL images
    and as preprocessed pixels: bit for bit (same batches, same operations, on the CPU)."""
    from clip_cir.data.io import load_image
    from clip_cir.encoding.split_features import EncodeOptions, split_features

    options = EncodeOptions(transform=stage1.clip.image_transform("targetpad", 1.25), batch_size=256, progress=False)
    evaluated = F.normalize(split_features(stage1.clip, val, options).gallery, dim=-1)
    files = list(val.gallery.values())
    by_path = stage1.encode_images(files)
    assert torch.equal(by_path, evaluated)
    assert torch.allclose(by_path.norm(dim=-1), torch.ones(len(files)), atol=1e-5)
    images = [load_image(f) for f in files]
    assert torch.equal(stage1.encode_images(images), evaluated)
    pixels = torch.stack([stage1.transform(image) for image in images[:8]])
    assert torch.equal(stage1.encode_images(pixels), evaluated[:8])
    mixed = [files[0], images[1], stage1.transform(images[2])]
    assert torch.allclose(stage1.encode_images(mixed), evaluated[:3], atol=1e-6)


def test_index_of_a_folder_shares_rank_gallery_dirs_cache_entry(tiny_runs, photos, cli, tmp_path):
    """`index("photos/")` names images by their path in the folder (recursively) and reads the
    feature cache entry `clip-cir rank --gallery-dir` wrote: nothing is encoded again."""
    from clip_cir.encoding.extraction import encode_counts

    cache = tmp_path / "cache"
    queries = tmp_path / "queries.csv"
    queries.write_text(f"reference,caption\n{photos / 'a.jpg'},is red\n")
    result = cli("rank", "--gallery-dir", photos, "--query-file", queries, "--pretrained", tiny_runs["stage1"],
                 "--cache-dir", cache, "--num-workers", "0", "--top-k", "5", "--output", tmp_path / "ranks.json")
    assert result.code == 0, result.err
    ranked = json.loads((tmp_path / "ranks.json").read_text())["queries"][0]["ranking"]
    model = clip_cir.load(tiny_runs["stage1"], cache=cache, progress=False)
    before = encode_counts.copy()
    gallery = model.index(photos)
    assert encode_counts["image"] == before["image"], "the folder's features were encoded again"
    assert gallery.names == sorted(gallery.names) and sum("/" in n for n in gallery.names) == 12
    hits = gallery.search(photos / "a.jpg", "is red", k=5)
    assert [name for name, _ in hits] == [hit["name"] for hit in ranked]


def test_feature_cache_for_galleries_and_long_lists_only(tiny_runs, photos, val, tmp_path):
    """`index` always reads and writes the feature cache; encode_images and encode_texts only for
    lists of a batch or more (a cache key hashes the tower): short lists leave no entry."""
    from clip_cir.api import CACHE_MIN_ROWS
    from clip_cir.encoding.extraction import encode_counts

    cache = tmp_path / "cache"
    model = clip_cir.load(tiny_runs["stage1"], cache=cache, progress=False)
    entries = lambda: sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []  # noqa: E731
    model.encode_images([photos / "a.jpg", photos / "b.jpg"])
    model.encode_texts(["is red"] * (CACHE_MIN_ROWS - 1))
    assert entries() == []
    model.index(photos)
    assert len(entries()) == 1
    files = [*val.gallery.values()] * 2
    first = model.encode_images(files[:CACHE_MIN_ROWS])
    assert len(entries()) == 2
    before = encode_counts.copy()
    assert torch.equal(model.encode_images(files[:CACHE_MIN_ROWS]), first) and encode_counts == before
    assert torch.equal(clip_cir.load(tiny_runs["stage1"], cache=False, progress=False)
                       .encode_images(files[:CACHE_MIN_ROWS]), first)


# --- search: references and exclusion -------------------------------------------------------------------


def test_search_leaves_out_a_gallery_reference_by_name_or_path_unless_asked(tiny_runs, photos):
    """With the reference image alone as the query (combining="image"), the reference itself
    would score 1: it is left out when named or given by path, kept with exclude_reference=False,
    and a PIL image of it (not a gallery member) finds it first."""
    model = clip_cir.load(tiny_runs["stage1"], combining="image", progress=False)
    gallery = model.index(photos)
    by_name = gallery.search("a.jpg", "anything", k=5)
    assert len(by_name) == 5 and "a.jpg" not in [n for n, _ in by_name]
    assert [s for _, s in by_name] == sorted((s for _, s in by_name), reverse=True)
    assert gallery.search(str(photos / "a.jpg"), "anything", k=5) == by_name
    kept = gallery.search("a.jpg", "anything", k=5, exclude_reference=False)
    assert kept[0][0] == "a.jpg" and kept[0][1] == pytest.approx(1.0, abs=1e-5) and kept[1:] == by_name[:4]
    with Image.open(photos / "a.jpg") as image:
        uploaded = gallery.search(image, "anything", k=5)
    assert uploaded[0][0] == "a.jpg" and [n for n, _ in uploaded[1:]] == [n for n, _ in by_name[:4]]
    keeping = model.index(photos, exclude_reference=False)
    assert keeping.search("a.jpg", "anything", k=1)[0][0] == "a.jpg"


def test_faiss_backend_answers_as_the_exact_one(stage1, photos):
    """`index(..., backend="faiss", index="flat")`: exact inner products through FAISS, so the same
    names and, to float rounding, the same scores, reference left out alike."""
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    exact = stage1.index(photos).search("a.jpg", "is blue", k=6)
    flat = stage1.index(photos, backend="faiss", index="flat")
    assert flat.index.description == "faiss flat (exact)"
    found = flat.search("a.jpg", "is blue", k=6)
    assert [n for n, _ in found] == [n for n, _ in exact]
    assert [s for _, s in found] == pytest.approx([s for _, s in exact], abs=1e-5)


# --- load --------------------------------------------------------------------------------------------------


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def test_load_a_stage1_run_and_a_stage2_run(tiny_runs, stage1, photos):
    """A stage-1 run: its CLIP with the element-wise sum. A stage-2 run: the CLIP its config.json
    names (the stage-1 run) and its Combiner, the same as giving both; combining= overrides it."""
    from clip_cir.models.clip import load_clip
    from clip_cir.models.combiner import Combiner, element_wise_sum, image_only
    from clip_cir.models.compositors.loading import load_compositor

    assert stage1.combine is element_wise_sum and stage1.combining == "element-wise sum"
    assert _same_weights(stage1.clip.model, load_clip(None, str(tiny_runs["stage1"])).model)
    stage2 = clip_cir.load(tiny_runs["stage2"], progress=False)
    assert isinstance(stage2.combine, Combiner) and not stage2.combine.training
    assert _same_weights(stage2.combine, load_compositor(tiny_runs["stage2"]))
    assert _same_weights(stage2.clip.model, stage1.clip.model)
    both = clip_cir.load(tiny_runs["stage1"], combiner=tiny_runs["stage2"], progress=False)
    images, captions = [photos / "a.jpg", photos / "b.jpg"], ["is red", "has two circles"]
    query = stage2.compose(images, captions)
    assert torch.equal(both.compose(images, captions), query)
    assert torch.allclose(query.norm(dim=-1), torch.ones(2), atol=1e-5)
    by_hand = element_wise_sum(stage1.image_features(images), stage1.text_features(captions))
    assert torch.equal(stage1.compose(images, captions), by_hand)
    assert not torch.allclose(query, by_hand, atol=1e-3)
    summed = clip_cir.load(tiny_runs["stage2"], combining="sum", progress=False)
    assert summed.combine is element_wise_sum and torch.equal(summed.compose(images, captions), by_hand)
    alone = clip_cir.load(tiny_runs["stage1"], combining="image", progress=False)
    assert alone.combine is image_only
    assert torch.allclose(alone.compose(images, captions), stage1.encode_images(images), atol=1e-6)


def test_load_with_slerp_composes_by_its_formula(photos):
    """combining="slerp" with slerp_alpha: the query is the normalised raw features' spherical
    interpolation, written here with angles (turn the image by αθ towards the caption)."""
    from clip_cir.models.combiner import Slerp

    model = clip_cir.load(model="cir-tiny-vit", combining="slerp", slerp_alpha=0.7, device="cpu", cache=False,
                          progress=False)
    assert model.combine == Slerp(0.7) and model.combining == "slerp (α=0.7)"
    images, captions = [photos / "a.jpg", photos / "b.jpg"], ["is red", "has two circles"]
    u = F.normalize(model.image_features(images).double(), dim=-1)
    t = F.normalize(model.text_features(captions).double(), dim=-1)
    cos = (u * t).sum(-1, keepdim=True)
    w = F.normalize(t - cos * u, dim=-1)
    by_angles = torch.cos(0.7 * torch.arccos(cos)) * u + torch.sin(0.7 * torch.arccos(cos)) * w
    assert torch.allclose(model.compose(images, captions).double(), by_angles, atol=1e-5)
    default = clip_cir.load(model="cir-tiny-vit", combining="slerp", device="cpu", cache=False, progress=False)
    assert default.combine == Slerp(0.8) and default.combining == "slerp (α=0.8)"


def test_load_a_tiny_config_without_weights_on_the_default_device():
    model = clip_cir.load(model="cir-tiny-vit", pretrained=None, progress=False)
    assert model.clip.source == "random-init" and model.combining == "element-wise sum"
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert next(model.clip.model.parameters()).device.type == model.device.type
    texts = model.encode_texts(["is red", "is blue"])
    assert texts.shape == (2, model.embed_dim) and torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert clip_cir.load(model="cir-tiny-vit", device="cpu", progress=False).device == torch.device("cpu")


def test_load_an_export_from_the_hub_with_and_without_its_combiner(tiny_runs, cli, tmp_path):
    """`hf-hub:ORG/NAME` written by `clip-cir export`: with combiner.safetensors the Combiner
    comes along; an export of the CLIP alone combines by the sum."""
    from clip_cir.models.combiner import element_wise_sum
    from clip_cir.models.compositors.loading import load_compositor

    for n, (name, extra) in enumerate([("with", ["--combiner", tiny_runs["stage2"]]), ("without", [])]):
        result = cli("export", "--pretrained", tiny_runs["stage1"], *extra, "--output-dir", tmp_path / name)
        assert result.code == 0, result.err
        install_in_hub_cache(tmp_path / name, f"clip-cir-api-test/{name}", f"{n + 7:040x}")
    with_combiner = clip_cir.load("hf-hub:clip-cir-api-test/with", progress=False)
    assert _same_weights(with_combiner.combine, load_compositor(tiny_runs["stage2"]))
    assert clip_cir.load("hf-hub:clip-cir-api-test/without", progress=False).combine is element_wise_sum


@pytest.fixture
def bad_combiner(tmp_path) -> Path:
    from clip_cir.models.combiner import Combiner

    path = tmp_path / "combiner32.pt"
    torch.save({"epoch": 1, "Combiner": Combiner(32, 16, 16).state_dict()}, path)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing-run", "checkpoint not found"),
    ("missing-combiner", "stage-2 checkpoint not found"),
    ("combiner-dims", "Combiner expects 32-d CLIP features, but"),
    ("unknown-combining", "unknown combining 'concat'"),
    ("combiner-and-combining", "give combiner or combining, not both"),
    ("slerp-alpha-range", "--slerp-alpha must be between 0 (the reference image alone) and 1 (the caption alone), "
                          "got 1.5"),
    ("slerp-alpha-without-slerp", "slerp_alpha goes with combining='slerp', not 'sum'"),
    ("stage2-and-combiner", "is a stage2 run and brings its own Combiner"),
    ("unknown-model", "unknown open_clip model 'cir-tiny-vitt'; did you mean cir-tiny-vit"),
    ("unknown-transform", "unknown transform 'crop'"),
    ("bad-device", "unknown device 'gpu0'"),
])
def test_load_errors_are_one_line(case, message, tiny_runs, bad_combiner, tmp_path):
    s1, s2 = tiny_runs["stage1"], tiny_runs["stage2"]
    calls = {
        "missing-run": lambda: clip_cir.load(tmp_path / "runs" / "nope"),
        "missing-combiner": lambda: clip_cir.load(s1, combiner=tmp_path / "nope.safetensors"),
        "combiner-dims": lambda: clip_cir.load(s1, combiner=bad_combiner),
        "unknown-combining": lambda: clip_cir.load(s1, combining="concat"),
        "combiner-and-combining": lambda: clip_cir.load(s1, combiner=s2, combining="sum"),
        "slerp-alpha-range": lambda: clip_cir.load(s1, combining="slerp", slerp_alpha=1.5),
        "slerp-alpha-without-slerp": lambda: clip_cir.load(s1, combining="sum", slerp_alpha=0.5),
        "stage2-and-combiner": lambda: clip_cir.load(s2, combiner=s2),
        "unknown-model": lambda: clip_cir.load(model="cir-tiny-vitt"),
        "unknown-transform": lambda: clip_cir.load(s1, transform="crop"),
        "bad-device": lambda: clip_cir.load(s1, device="gpu0"),
    }
    with pytest.raises(CIRError) as error:
        calls[case]()
    assert message in _one_line(error)


def test_bad_input_to_encode_compose_index_and_search_is_one_line(stage1, photos, tmp_path):
    gallery = stage1.index(photos)
    (tmp_path / "empty").mkdir()
    cases = [
        (lambda: stage1.encode_images([photos / "a.jpg", tmp_path / "gone.jpg"]), "gone.jpg: image file not found"),
        (lambda: stage1.compose([photos / "a.jpg"], [""]), "caption is empty"),
        (lambda: stage1.compose([photos / "a.jpg", photos / "b.jpg"], ["is red"]), "2 images but 1 captions"),
        (lambda: stage1.encode_texts([3]), "caption must be a string, got int"),
        (lambda: stage1.encode_images(torch.zeros(3, 5, 5)), "a pixel tensor for this model is [3, 64, 64]"),
        (lambda: stage1.index(tmp_path / "empty"), "no images"),
        (lambda: stage1.index(tmp_path / "nowhere"), "gallery folder not found"),
        (lambda: stage1.index([photos / "a.jpg", photos / "a.jpg"]), "is listed twice in the gallery"),
        (lambda: gallery.search("nope.jpg", "is red"), "'nope.jpg' is neither an image of the gallery nor an image"),
        (lambda: gallery.search("a.jpg", "   "), "caption is empty"),
        (lambda: gallery.search("a.jpg", "is red", k=0), "k must be a positive integer"),
        (lambda: stage1.index(photos, backend="annoy"), "unknown search back-end 'annoy'"),
    ]
    for call, message in cases:
        with pytest.raises(CIRError) as error:
            call()
        assert message in _one_line(error), message


# --- the demo is the API ----------------------------------------------------------------------------------


def test_the_demo_searches_through_the_api(stage1, val):
    """The demo's engine holds an API Gallery and answers exactly what the API answers."""
    from clip_cir.apps.demo.engine import DemoEngine

    engine = DemoEngine.from_splits(stage1.clip, stage1.combine, [val], stage1.encode, combining_name="sum")
    assert isinstance(engine.gallery, clip_cir.Gallery) and engine.gallery.model.combine is stage1.combine
    gallery = stage1.index(val)
    query = val.queries[3]
    result = engine.search(query.eval_caption, 7, reference=query.reference)
    assert [(h.name, h.score) for h in result.hits] == gallery.search(query.reference, query.eval_caption, k=7)
    assert result.excluded_reference and query.reference not in [h.name for h in result.hits]


# --- import cost --------------------------------------------------------------------------------------------


def test_import_clip_cir_and_help_load_no_torch_and_the_api_loads_on_first_use():
    script = ("import sys\nimport clip_cir\nfrom clip_cir.apps.cli import main\n"
              "names = dir(clip_cir)\n"
              "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
              "print('torch' in sys.modules, 'load' in names, sorted(clip_cir.__all__), file=sys.stderr)\n"
              "load = clip_cir.load\n"
              "print('torch' in sys.modules, load.__module__, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = result.stderr.strip().splitlines()
    assert lines[-2] == ("False True ['CIRModel', 'Gallery', 'TrainedRun', '__version__', 'finetune', 'load', "
                         "'pretrain', 'train_attributes', 'train_combiner', 'train_zero_shot']"), result.stderr
    assert lines[-1] == "True clip_cir.api.loading", result.stderr
    assert "usage: clip-cir" in result.stdout
    with pytest.raises(AttributeError, match="no attribute 'fine_tune'"):
        clip_cir.fine_tune  # noqa: B018 - not a name of the API


def test_readme_training_example_runs_on_synthetic_data(synth_root, tmp_path, monkeypatch):
    """README.md's training block, with the synthetic data for DATA and, for a CPU, the tiny model
    and one short epoch: stage 1 then stage 2 on its CLIP, whose best numbers are the ones its
    validation logged, and which `clip_cir.load` then composes with."""
    import pandas as pd

    code = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8")
                      .split("## Python API", 1)[1], re.DOTALL)[1]
    small = 'epochs=1, batch_size=40, lr=1e-4, num_workers=0, no_progress=True'
    for old, new in [('"DATA"', repr(str(synth_root))),
                     ('model="RN50x4", pretrained="openai"', f'model="cir-tiny-vit", pretrained=None, {small}'),
                     ('experiment_name="cirr-stage2"', f'experiment_name="cirr-stage2", {small}')]:
        assert old in code
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("import clip_cir\n" + code, "README.md", "exec"), namespace)
    stage1, stage2 = namespace["stage1"], namespace["stage2"]
    assert stage1.path == Path("runs/cirr-stage1") and stage2.path == Path("runs/cirr-stage2")
    config = json.loads((stage2.path / "config.json").read_text())
    assert config["pretrained"] == str(stage1.path.resolve()) and config["program"] == "stage2"
    val = pd.read_csv(stage2.path / "validation_metrics.csv")
    assert stage2.best["score"] == pytest.approx(val["score"].max())
    assert json.loads((stage1.path / "config.json").read_text())["encoder"] == "both"
    model = clip_cir.load(stage2.path)
    assert "Combiner" in model.combining
