"""`clip-cir export` and `hf-hub:` sources: a trained tiny CLIP + Combiner (and a published
`{"CLIP": ...}` + `{"Combiner": ...}` pair) exported, laid out as huggingface_hub's cache holds a
downloaded repository, and loaded offline by plain open_clip (in a process without clip-cir) and
by every clip-cir command, with the same features and exactly the same metrics as their sources.

conftest points huggingface_hub at a session temp dir with HF_HUB_OFFLINE=1 and no token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import install_in_hub_cache
from PIL import Image

import clip_cir
from clip_cir.models.clip import load_clip
from clip_cir.models.combiner import Combiner
from clip_cir.models.compositors.loading import load_compositor

ORG = "clip-cir-test"
TEXTS = ["make the red circle blue", "add a small green square at the top left", "remove the star"]


def export(*args) -> None:
    from clip_cir.apps.cli import main

    main(["export", *map(str, args)])


@pytest.fixture(scope="module")
def published(make_tiny_clip, tmp_path_factory) -> dict[str, Path]:
    """A published-format pair on the ResNet tiny CLIP: {"epoch", "CLIP": OpenAI state dict} and
    {"epoch", "Combiner": state_dict}, neither at its default init."""
    folder = tmp_path_factory.mktemp("published")
    torch.save({"epoch": 7, "CLIP": make_tiny_clip("cir-tiny-rn", seed=11).state_dict()}, folder / "clip.pt")
    torch.manual_seed(12)
    combiner = Combiner(64, 256, 512)
    torch.save({"epoch": 9, "Combiner": combiner.state_dict()}, folder / "combiner.pt")
    return {"clip": folder / "clip.pt", "combiner": folder / "combiner.pt"}


@pytest.fixture(scope="module")
def hub(tiny_runs, published, tmp_path_factory) -> dict[str, dict]:
    """Both pairs exported and installed in the (session) Hugging Face cache."""
    out = tmp_path_factory.mktemp("exports")
    sources = {"runs": {"clip": tiny_runs["stage1"], "combiner": tiny_runs["stage2"]}, "published": published}
    pairs = {}
    for n, (key, source) in enumerate(sources.items()):
        export("--pretrained", source["clip"], "--combiner", source["combiner"], "--output-dir", out / key)
        repo = f"{ORG}/{key}"
        install_in_hub_cache(out / key, repo, f"{n:040x}")
        pairs[key] = {**source, "folder": out / key, "name": f"hf-hub:{repo}"}
    return pairs


def _images(synth_root: Path) -> list[Path]:
    return sorted((synth_root / "cirr_dataset" / "dev").glob("*.png"))[:4]


PLAIN_OPEN_CLIP = """
import json, sys
import open_clip, torch
from PIL import Image
from safetensors.torch import save_file

names, images, texts, out = json.loads(sys.argv[1])
result = {}
for i, name in enumerate(names):
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    tokenizer = open_clip.get_tokenizer(name)
    pixels = torch.stack([preprocess(Image.open(p)) for p in images])
    with torch.no_grad():
        result[f"{i}.pixels"] = pixels
        result[f"{i}.image"] = model.eval().encode_image(pixels)
        result[f"{i}.text"] = model.encode_text(tokenizer(texts))
    quick = [isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules()]
    result[f"{i}.quick_gelu"] = torch.tensor(quick).any().reshape(1)
assert not [m for m in sys.modules if m.startswith("clip_cir")], "plain open_clip must not need clip-cir"
save_file(result, out)
"""


def test_plain_open_clip_loads_the_exports_with_the_sources_features(hub, synth_root, tmp_path):
    from safetensors.torch import load_file

    keys = list(hub)
    images = [str(p) for p in _images(synth_root)]
    out = tmp_path / "features.safetensors"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # clip-cir not even importable
    args = json.dumps([[hub[k]["name"] for k in keys], images, TEXTS, str(out)])
    done = subprocess.run([sys.executable, "-c", PLAIN_OPEN_CLIP, args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = load_file(str(out))
    for i, key in enumerate(keys):
        source = load_clip(None, str(hub[key]["clip"]))
        pixels = torch.stack([source.clip_preprocess(Image.open(p)) for p in images])
        assert torch.equal(plain[f"{i}.pixels"], pixels), key  # the preprocessing config travelled too
        assert bool(plain[f"{i}.quick_gelu"]), key  # rebuilt with QuickGELU, as the weights need
        with torch.no_grad():
            image, text = source.model.encode_image(pixels), source.model.encode_text(source.tokenizer(TEXTS))
        assert image.shape == plain[f"{i}.image"].shape and text.shape == plain[f"{i}.text"].shape
        torch.testing.assert_close(plain[f"{i}.image"], image, rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(plain[f"{i}.text"], text, rtol=1e-5, atol=1e-6, msg=key)
        assert image.abs().max() > 1e-3 and text.abs().max() > 1e-3


def _eval(cli, synth_root, cache: Path, *model_args) -> dict:
    out = cache.parent / f"{cache.name}.json"
    result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, "--cache-dir", cache, "--num-workers", "0",
                 "--output", out, *model_args)
    assert result.code == 0, result.err
    return json.loads(out.read_text())


@pytest.mark.parametrize("key", ["runs", "published"])
def test_eval_from_the_hub_reproduces_the_source_metrics_exactly(hub, key, cli, synth_root, tmp_path):
    pair = hub[key]
    source = _eval(cli, synth_root, tmp_path / "source", "--pretrained", pair["clip"], "--combiner", pair["combiner"])
    from_hub = _eval(cli, synth_root, tmp_path / "hub", "--pretrained", pair["name"], "--combiner", pair["name"])
    assert from_hub == source
    assert len(source) >= 7 and any(v > 0 for v in source.values())
    # The stage-2 run's own validation of the same checkpoint agrees (the Combiner is the trained one).
    if key == "runs":
        recorded = json.loads((pair["combiner"] / "best" / "combiner.json").read_text())["metrics"]
        assert from_hub["recall_at10"] == pytest.approx(recorded["recall_at10"], abs=1e-3)


def test_export_folder_is_open_clips_layout_with_a_card_and_no_local_paths(hub, tiny_runs):
    folder = hub["runs"]["folder"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "combiner.json", "combiner.safetensors",
                                                         "open_clip_config.json", "open_clip_model.safetensors"]
    config = json.loads((folder / "open_clip_config.json").read_text())
    # cir-tiny-vit is not an open_clip built-in: the whole architecture is in the file.
    assert config["model_cfg"]["quick_gelu"] is True and config["model_cfg"]["embed_dim"] == 128
    assert config["model_cfg"]["vision_cfg"]["patch_size"] == 16 and config["model_cfg"]["text_cfg"]["layers"] == 4
    assert config["preprocess_cfg"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    dims = json.loads((folder / "combiner.json").read_text())
    assert {k: dims[k] for k in ("clip_feature_dim", "projection_dim", "hidden_dim")} == \
        {"clip_feature_dim": 128, "projection_dim": 512, "hidden_dim": 1024}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: open_clip" in card
    for expected in ("Stage 1 (CLIP fine-tuning)", "Stage 2 (Combiner)", "encoder: text", "lr: 0.001",
                     "Validation metrics", "create_model_and_transforms(", "--pretrained hf-hub:",
                     "--combiner hf-hub:"):
        assert expected in card, expected
    recorded = json.loads((tiny_runs["stage1"] / "best" / "clip.json").read_text())["metrics"]
    assert f"{recorded['recall_at10']:.2f}" in card
    root = str(tiny_runs["stage1"].parent.parent)
    for file in ("README.md", "combiner.json", "open_clip_config.json"):
        assert root not in (folder / file).read_text(), file  # publishable: no local paths


def test_a_new_revision_of_a_repo_never_gets_stale_cached_features(hub, tiny_checkpoint, cli, synth_root, tmp_path):
    """Cached features are keyed by the weights, not by the hub name."""
    repo = f"{ORG}/revised"
    install_in_hub_cache(hub["runs"]["folder"], repo, "a" * 40)
    shared = tmp_path / "shared"
    first = _eval(cli, synth_root, shared, "--pretrained", f"hf-hub:{repo}")
    export("--pretrained", tiny_checkpoint, "--output-dir", tmp_path / "untrained")
    install_in_hub_cache(tmp_path / "untrained", repo, "b" * 40)  # refs/main moves to the new commit
    second = _eval(cli, synth_root, shared, "--pretrained", f"hf-hub:{repo}")
    expected = _eval(cli, synth_root, tmp_path / "fresh", "--pretrained", tiny_checkpoint)
    assert second == expected and second != first


def test_training_from_a_hub_clip_and_reloading_its_checkpoint_without_the_hub(hub, cli, synth_root, tmp_path,
                                                                                 monkeypatch):
    from huggingface_hub import constants

    from clip_cir.models.files import save_weights
    from clip_cir.training.run import clip_metadata

    name = hub["runs"]["name"]
    clip_cir.train_combiner(dataset="cirr", data_root=synth_root, pretrained=name, epochs=1, batch_size=64,
                            output_dir=tmp_path, experiment_name="s2", num_workers=0, no_progress=True)
    assert json.loads((tmp_path / "s2" / "best" / "combiner.json").read_text())["clip_model_name"] == name
    assert _eval(cli, synth_root, tmp_path / "c", "--pretrained", name, "--combiner", tmp_path / "s2")

    clip = load_clip(None, name)
    save_weights(tmp_path / "clip.safetensors", clip.model.state_dict(), clip_metadata(clip, "stage1", 1, {}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    again = load_clip(None, str(tmp_path / "clip.safetensors"))  # the architecture is in the checkpoint
    assert again.model_name == name and again.signature == clip.signature
    tokens = clip.tokenizer(TEXTS)
    assert torch.equal(again.tokenizer(TEXTS), tokens)
    with torch.no_grad():
        assert torch.equal(again.model.encode_text(tokens), clip.model.encode_text(tokens))


def test_the_combiner_loads_from_the_hub_as_it_was_trained(hub):
    for pair in hub.values():
        source, from_hub = load_compositor(pair["combiner"]), load_compositor(pair["name"])
        a, b = source.state_dict(), from_hub.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", ["missing", "not-a-checkpoint", "clip-as-combiner", "dims", "hub-absent"])
def test_a_bad_export_source_gets_one_clear_line(case, hub, tiny_checkpoint, published, cli, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not weights")
    args, message = {
        "missing": (["--pretrained", tmp_path / "missing.pt"], "checkpoint not found"),
        "not-a-checkpoint": (["--pretrained", garbage], "not a readable weights checkpoint"),
        "clip-as-combiner": (["--pretrained", tiny_checkpoint, "--combiner", tiny_checkpoint],
                             "no 'Combiner' state dict"),
        "dims": (["--pretrained", published["clip"], "--combiner", hub["runs"]["combiner"]],
                 "expects 128-d CLIP features"),
        "hub-absent": (["--pretrained", f"hf-hub:{ORG}/absent"], "not in the Hugging Face cache"),
    }[case]
    result = cli("export", *args, "--output-dir", tmp_path / "out")
    assert result.code == 2 and len(result.error_lines) == 1, result.err
    assert message in result.error_lines[0] and "Traceback" not in result.err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.*"))


def test_export_replaces_only_an_earlier_export_and_only_when_asked(hub, cli, tmp_path, published):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # --overwrite never deletes a folder an export did not write
        result = cli("export", "--pretrained", published["clip"], "--output-dir", mine, *extra)
        assert result.code == 2 and len(result.error_lines) == 1 and (mine / "keep.txt").exists()
    assert "--overwrite" in cli("export", "--pretrained", published["clip"], "--output-dir", hub["runs"]["folder"]).err
    out = tmp_path / "out"
    shutil.copytree(hub["runs"]["folder"], out)
    assert cli("export", "--pretrained", published["clip"], "--output-dir", out, "--overwrite").code == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "open_clip_config.json",
                                                     "open_clip_model.safetensors"]  # the old Combiner is gone
    assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"] == 64


@pytest.mark.parametrize("option", ["--pretrained", "--combiner"])
def test_a_hub_name_not_in_the_cache_offline_gets_one_clear_line(option, hub, cli, synth_root):
    args = {"--pretrained": ["--pretrained", f"hf-hub:{ORG}/absent"],
            "--combiner": ["--pretrained", hub["runs"]["name"], "--combiner", f"hf-hub:{ORG}/absent"]}[option]
    result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, "--num-workers", "0", *args)
    assert result.code == 2 and len(result.error_lines) == 1, result.err
    line = result.error_lines[0]
    assert f"hf-hub:{ORG}/absent" in line and "not in the Hugging Face cache" in line and "HF_HUB_OFFLINE" in line


def test_push_needs_a_token_and_the_network(hub, cli, tmp_path, monkeypatch):
    source = hub["published"]["clip"]
    result = cli("export", "--pretrained", source, "--output-dir", tmp_path / "a", "--push-to-hub", "someone/tiny")
    assert result.code == 2 and len(result.error_lines) == 1 and "needs a Hugging Face token" in result.err
    assert not (tmp_path / "a").exists()  # checked before any work

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    result = cli("export", "--pretrained", source, "--output-dir", tmp_path / "b", "--push-to-hub", "someone/tiny")
    assert result.code == 2 and len(result.error_lines) == 1 and "HF_HUB_OFFLINE is set" in result.err

    # Online, but the Hub unreachable (a closed local port): the folder is written, the push fails in one line.
    import huggingface_hub.hf_api
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", "http://127.0.0.1:9")
    result = cli("export", "--pretrained", source, "--output-dir", tmp_path / "c", "--push-to-hub", "someone/tiny")
    assert result.code == 2 and len(result.error_lines) == 1, result.err
    assert "could not push to hf-hub:someone/tiny" in result.err and "hf upload someone/tiny" in result.err
    assert (tmp_path / "c" / "open_clip_model.safetensors").is_file()
