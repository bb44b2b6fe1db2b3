"""Every backbone family through the toolkit, offline, on tiny configs: ResNet, ViT, SigLIP-style
(Hugging Face tokenizer, no causal mask, last-token pooling, logit bias), Hugging Face text towers
(RoBERTa, and multilingual XLM-RoBERTa as in `xlm-roberta-base-ViT-B-32`), ConvNeXt and EVA02
(timm image towers). Stage 1 (text and both towers) and stage 2 through the Python API, and
`clip-cir eval` of what they wrote; `clip-cir export` of the runs, loaded back as an `hf-hub:`
repository (features and metrics exactly the runs'), `clip-cir rank` and the demo with it;
pretraining; stage 1 and pretraining in two processes; text trimming exact or off per family; a
missing optional package or an uncached Hugging Face repository as one error line."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    HF_TEXT_MODEL,
    SIGLIP_TOKENIZER,
    XLMR_TEXT_MODEL,
    command_line,
    ddp_launcher,
    initial_weights,
    install_in_hub_cache,
    launch_stage1,
    pretrain_options,
    stage1_options,
    stage2_options,
)
from safetensors.torch import load_file

import clip_cir
from clip_cir.data import load_splits
from clip_cir.data.io import load_image
from clip_cir.encoding.ranking import rank_gallery
from clip_cir.models.clip import CONFIG_DIR, load_clip
from clip_cir.models.compositors.loading import load_compositor
from clip_cir.models.towers import can_trim_text, encode_text, trim_tokens

MATRIX = ["cir-tiny-rn", "cir-tiny-vit", "cir-tiny-siglip", "cir-tiny-hftext", "cir-tiny-xlmr", "cir-tiny-convnext",
          "cir-tiny-eva"]
"""Families run through eval, stage 1, stage 2, export (loaded back from the Hub cache), rank, the
demo and pretrain."""

TRIMS = {"cir-tiny-rn": True, "cir-tiny-vit": True, "cir-tiny-convnext": True,
         "cir-tiny-siglip": False, "cir-tiny-hftext": False, "cir-tiny-xlmr": False, "cir-tiny-eva": False}
"""Whether a family's text tower may be cut to the batch's longest caption: causal EOT-pooling
`CLIP` towers only. SigLIP (no causal mask, last-token pooling) and Hugging Face towers
(bidirectional) must not be; EVA's causal tower sits in a `CustomTextCLIP`, which is left at full
length."""

RECALL_KEYS = {f"recall_at{k}" for k in (1, 5, 10, 50)} | {f"recall_subset_at{k}" for k in (1, 2, 3)}
HUB_ORG = "clip-cir-matrix"
"""Exports of the matrix's runs are installed in the session's Hugging Face cache as HUB_ORG/<family>."""
EXPORT_FILES = ["README.md", "combiner.json", "combiner.safetensors", "open_clip_config.json",
                "open_clip_model.safetensors"]
PRETRAIN_ROWS = 50
"""Rows of the synthetic caption CSV each family pretrains on: 2 held out, 3 steps of 16."""
CAPTIONS = ["is red", "has a small blue triangle on the left instead of the big green circle",
            "Same shirt but with long sleeves and a darker colour, no logo on the chest.", "x"]


def _common(synth_root) -> list:
    return ["--dataset", "cirr", "--data-root", synth_root, "--num-workers", "0"]


def _is_text(name: str) -> bool:
    return not name.startswith("visual.") and not name.startswith("logit_")


def _changed(before: dict, after: dict, tower: str) -> list[bool]:
    keys = [k for k in before if (tower == "text") == _is_text(k) and not k.startswith("logit_")]
    assert keys, tower
    return [not torch.equal(before[k], after[k]) for k in keys]


def _eval_equals_validation(cli, synth_root, run, tmp_path, *model_args) -> dict:
    """`clip-cir eval` of what a run saved gives the run's last validation numbers."""
    out = tmp_path / f"{run.name}-eval.json"
    result = cli("eval", *_common(synth_root), *model_args, "--output", out)
    assert result.code == 0, result.err
    metrics = json.loads(out.read_text())
    assert RECALL_KEYS <= set(metrics) and all(0 <= metrics[k] <= 100 for k in RECALL_KEYS)
    recalls = [metrics[f"recall_at{k}"] for k in (1, 5, 10, 50)]
    assert recalls == sorted(recalls)
    validation = pd.read_csv(run / "validation_metrics.csv").iloc[-1]
    for key in RECALL_KEYS:
        assert metrics[key] == pytest.approx(validation[key], abs=6e-5), (run.name, key)
    return metrics


def _refuse(*args, **kwargs):
    raise AssertionError("base weights loaded")


def _export_to_hub_cache(cli, name: str, clip_run: Path, combiner_run: Path, tmp_path: Path) -> str:
    """`clip-cir export` of a CLIP and a Combiner, laid out in the session's Hugging Face cache as a
    download of HUB_ORG/<name> is (see tests/helpers.py): its `hf-hub:` name."""
    folder = tmp_path / "export"
    result = cli("export", "--pretrained", clip_run, "--combiner", combiner_run, "--output-dir", folder)
    assert result.code == 0, result.err
    assert sorted(p.name for p in folder.iterdir()) == EXPORT_FILES
    config = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    expected = open_clip.get_model_config(name)
    assert {k: config[k] for k in expected} == {k: expected[k] for k in expected}  # the whole architecture
    install_in_hub_cache(folder, f"{HUB_ORG}/{name}")
    return f"hf-hub:{HUB_ORG}/{name}"


def _images(synth_root: Path, n: int = 3) -> list[Path]:
    return sorted((synth_root / "cirr_dataset" / "dev").glob("*.png"))[:n]


def _same_clip(source, shared, synth_root: Path) -> None:
    """The exported CLIP is the source's: weights, tokens, preprocessing and features, exactly."""
    a, b = source.model.state_dict(), shared.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert shared.embed_dim == source.embed_dim and shared.mean_std == source.mean_std
    assert torch.equal(shared.tokenize(CAPTIONS), source.tokenize(CAPTIONS))
    images = [load_image(p) for p in _images(synth_root)]
    for transform in ("clip", "targetpad"):
        pixels = [torch.stack([c.image_transform(transform, 1.25)(i) for i in images]) for c in (source, shared)]
        assert torch.equal(*pixels), transform
    pixels = pixels[0]  # targetpad's, as eval's
    with torch.no_grad():
        image = source.model.encode_image(pixels)
        assert torch.equal(shared.model.encode_image(pixels), image)
        text = [encode_text(c.model, c.tokenize(CAPTIONS)) for c in (source, shared)]
    assert torch.equal(*text) and text[0].abs().max() > 1e-3
    # open_clip's own loaders read the same repository to the same model, tokens and preprocessing.
    model, _, preprocess = open_clip.create_model_and_transforms(shared.model_name)
    tokens = open_clip.get_tokenizer(shared.model_name)(CAPTIONS)
    assert torch.equal(tokens, source.tokenizer(CAPTIONS))
    plain = torch.stack([preprocess(i) for i in images])
    assert torch.equal(plain, torch.stack([source.clip_preprocess(i) for i in images]))
    with torch.no_grad():
        assert torch.equal(model.eval().encode_image(pixels), image)
        assert torch.equal(model.encode_text(tokens), source.model.encode_text(tokens))


def _rank_file(cli, synth_root: Path, model_args: list, split, clip, tmp_path: Path) -> list[dict]:
    """`clip-cir rank` of CIRR's val split: a well-formed top-50 file, every query once, in order."""
    out = tmp_path / "ranks" / "val.json"
    result = cli("rank", *_common(synth_root), "--split", "val", *model_args, "--top-k", "50", "--output", out)
    assert result.code == 0, result.err
    written = json.loads(out.read_text())
    assert {k: written[k] for k in ("dataset", "split", "top_k", "combining", "model")} == \
        {"dataset": "cirr", "split": "val", "top_k": 50, "combining": "combiner", "model": clip.describe()}
    assert [(q["qid"], q["reference"], q["caption"], q["target"]) for q in written["queries"]] == \
        [(q.qid, q.reference, q.eval_caption, q.target) for q in split.queries]
    for query in written["queries"]:
        names, scores = [r["name"] for r in query["ranking"]], [r["score"] for r in query["ranking"]]
        assert len(names) == 50 == len(set(names)) and set(names) <= set(split.gallery)
        assert query["reference"] not in names  # CIRR's protocol
        assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    return written["queries"]


@torch.no_grad()
def _direct_ranking(clip, combiner, split, queries, k: int) -> tuple[list[list[str]], list[list[float]]]:
    """Top-k names and scores computed step by step through the library: every gallery image
    through the eval transform and the image tower, the captions through the text tower, the
    Combiner, cosine similarity, the reference left out."""
    names = list(split.gallery)
    transform = clip.image_transform("targetpad", 1.25)
    pixels = torch.stack([transform(load_image(split.gallery[n])) for n in names])
    gallery = clip.model.eval().encode_image(pixels)
    text = encode_text(clip.model, clip.tokenize([q.eval_caption for q in queries]))
    references = torch.tensor([names.index(q.reference) for q in queries])
    query = F.normalize(combiner.eval()(gallery[references], text), dim=-1)
    scores, top = rank_gallery(query, F.normalize(gallery, dim=-1), k, references)
    return [[names[i] for i in row] for row in top.tolist()], scores.tolist()


def _demo_search_equals(synth_root: Path, model_args: list, clip, query, reference_file: Path,
                        expected: list[str]) -> None:
    """The demo, built from its command line as `clip-cir demo` builds it: a search by a gallery
    reference, and one by that reference's file uploaded, return `expected`."""
    pytest.importorskip("flask", reason="the demo needs Flask (pip install 'clip-cir[demo]')")
    from clip_cir.apps.demo.app import _build_app
    from clip_cir.params import demo_parser

    args = demo_parser().parse_args([*map(str, _common(synth_root)), *map(str, model_args)])
    client = _build_app(args).test_client()
    info = client.get("/api/info").get_json()
    assert info["model"] == clip.describe() and info["gallery_size"] == 180 and info["exclude_reference"]
    answer = client.post("/api/search", json={"reference": query.reference, "caption": query.eval_caption,
                                              "k": len(expected)}).get_json()
    assert [hit["name"] for hit in answer["results"]] == expected, answer
    # The reference's file uploaded goes through the demo's own image encoding: the same ranking, with
    # the reference itself (only a search by name leaves it out) somewhere in it.
    upload = {"image": (io.BytesIO(reference_file.read_bytes()), reference_file.name),
              "caption": query.eval_caption, "k": str(len(expected) + 1)}
    answer = client.post("/api/search", data=upload, content_type="multipart/form-data").get_json()
    names = [hit["name"] for hit in answer["results"]]
    assert answer["excluded_reference"] is False and [n for n in names if n != query.reference][:len(expected)] \
        == expected, answer


@pytest.mark.parametrize("name", MATRIX)
def test_family_trains_and_its_checkpoints_reload(name, cli, synth_root, hf_standins, tmp_path, monkeypatch):
    start = initial_weights(name)  # the runs' seed: their random init (and a cached HF text tower) is this one
    runs = {}
    for encoder in ("text", "both"):
        clip_cir.finetune(**stage1_options(synth_root, tmp_path, f"s1-{encoder}", model=name, encoder=encoder,
                                           epochs=1, batch_size=60, lr=1e-3))
        runs[encoder] = tmp_path / f"s1-{encoder}"
        trained = load_file(str(runs[encoder] / "last" / "clip.safetensors"))
        assert trained.keys() == start.keys()
        text, image = _changed(start, trained, "text"), _changed(start, trained, "image")
        assert any(text), (encoder, "text tower did not train")
        assert any(image) if encoder == "both" else not any(image), (encoder, "image tower")
        meta = json.loads((runs[encoder] / "last" / "clip.json").read_text())
        assert meta["model_name"] == name and meta["encoder"] == encoder
    # Reloading a checkpoint never fetches a Hugging Face text tower's base weights (they are replaced).
    import transformers

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", _refuse)
    _eval_equals_validation(cli, synth_root, runs["text"], tmp_path, "--pretrained", runs["text"] / "last")
    _eval_equals_validation(cli, synth_root, runs["both"], tmp_path, "--pretrained", runs["both"] / "last")

    clip_cir.train_combiner(**stage2_options(synth_root, tmp_path, "s2", model=None, pretrained=runs["text"] / "last",
                                             epochs=1, batch_size=64, num_workers=0))
    meta = json.loads((tmp_path / "s2" / "last" / "combiner.json").read_text())
    assert meta["clip_feature_dim"] == open_clip.get_model_config(name)["embed_dim"]
    metrics = _eval_equals_validation(cli, synth_root, tmp_path / "s2", tmp_path, "--pretrained",
                                      runs["text"] / "last", "--combiner", tmp_path / "s2" / "last")

    # Shared as users share them: exported, then loaded from the Hugging Face cache as hf-hub:ORG/NAME.
    hub = _export_to_hub_cache(cli, name, runs["text"] / "last", tmp_path / "s2" / "last", tmp_path)
    source = load_clip(None, str(runs["text"] / "last"))
    shared = load_clip(None, hub)
    _same_clip(source, shared, synth_root)
    a, b = load_compositor(tmp_path / "s2" / "last").state_dict(), load_compositor(hub).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hub_args = ["--pretrained", hub, "--combiner", hub, "--cache-dir", tmp_path / "hub-cache"]  # encoded anew
    out = tmp_path / "hub-eval.json"
    result = cli("eval", *_common(synth_root), *hub_args, "--output", out)
    assert result.code == 0, result.err
    assert json.loads(out.read_text()) == metrics

    # Ranked by `clip-cir rank` (a warm cache), by the library step by step, and by the demo.
    split = load_splits("cirr", synth_root, "val")[0]
    ranked = _rank_file(cli, synth_root, hub_args, split, shared, tmp_path)
    for k in (1, 5, 10, 50):  # the ranking eval scored
        hits = sum(q["target"] in [r["name"] for r in q["ranking"][:k]] for q in ranked)
        assert 100 * hits / len(ranked) == pytest.approx(metrics[f"recall_at{k}"], abs=1e-3), k
    few = split.queries[:3]
    names, scores = _direct_ranking(shared, load_compositor(hub), split, few, k=10)
    for query, entry, expected, expected_scores in zip(few, ranked, names, scores):
        assert entry["qid"] == query.qid and [r["name"] for r in entry["ranking"][:10]] == expected
        assert [r["score"] for r in entry["ranking"][:10]] == pytest.approx(expected_scores, abs=1e-5)
    _demo_search_equals(synth_root, hub_args, shared, few[0], split.gallery[few[0].reference], names[0])


@pytest.mark.parametrize("name", MATRIX)
def test_family_pretrains_and_its_checkpoint_reloads(name, cli, synth_root, hf_standins, tmp_path):
    """Pretraining (CLIP's contrastive loss on image-caption pairs) trains both towers and the
    temperature of every family; its checkpoint is a `--pretrained` like any other."""
    start = initial_weights(name)  # the run's seed: its random init is this one
    # The synthetic caption CSV's first rows (all 600 are 12 times the steps), image paths made absolute.
    header, *rows = (synth_root / "pretrain_captions.csv").read_text().splitlines()[:PRETRAIN_ROWS + 1]
    captions = tmp_path / "captions.csv"
    captions.write_text("\n".join([header, *(f"{synth_root / row}" for row in rows)]) + "\n")
    clip_cir.pretrain(**pretrain_options(captions, tmp_path, "pt", model=name, batch_size=16))
    run = tmp_path / "pt"
    trained = load_file(str(run / "last" / "clip.safetensors"))
    assert trained.keys() == start.keys()
    assert any(_changed(start, trained, "text")) and any(_changed(start, trained, "image"))
    assert not torch.equal(trained["logit_scale"], start["logit_scale"])
    if "logit_bias" in start:  # SigLIP's: no part of CLIP's loss, frozen
        assert torch.equal(trained["logit_bias"], start["logit_bias"])
    meta = json.loads((run / "last" / "clip.json").read_text())
    assert meta["model_name"] == name and meta["stage"] == "pretrain"
    reloaded = load_clip(None, str(run / "last")).model.state_dict()
    assert all(torch.equal(reloaded[k], trained[k]) for k in trained)
    losses = pd.read_csv(run / "validation_metrics.csv")["val_loss"].tolist()
    assert len(losses) == 2 and all(loss > 0 for loss in losses)  # before and after the epoch
    out = tmp_path / "pt-eval.json"
    result = cli("eval", *_common(synth_root), "--pretrained", run / "last", "--output", out)
    assert result.code == 0, result.err
    metrics = json.loads(out.read_text())
    assert RECALL_KEYS <= set(metrics) and all(0 <= metrics[k] <= 100 for k in RECALL_KEYS)


@pytest.mark.parametrize("name", sorted(TRIMS))
def test_text_trimming_is_exact_or_off(name, hf_standins):
    clip = load_clip(name)
    model, tokens = clip.model, clip.tokenizer(CAPTIONS)
    assert can_trim_text(model) == TRIMS[name]
    trimmed = trim_tokens(model, tokens)
    with torch.no_grad():
        full = model.encode_text(tokens)
        features = encode_text(model, trimmed)
    if TRIMS[name]:
        assert trimmed.shape[1] < tokens.shape[1]
        assert torch.equal(trimmed, tokens[:, : trimmed.shape[1]])
    else:
        assert torch.equal(trimmed, tokens) and torch.equal(clip.tokenize(CAPTIONS), tokens)
    assert (features - full).abs().max() <= 1e-5


def test_tiny_families_are_what_their_names_say(hf_standins):
    """The stand-ins are really used: the HF tokenizers' own ids, the (XLM-)RoBERTa towers' cached
    weights, timm's towers (EVA02's blocks), SigLIP's settings."""
    from safetensors.torch import load_file as load
    from transformers import AutoTokenizer

    siglip = load_clip("cir-tiny-siglip")
    ids = AutoTokenizer.from_pretrained(SIGLIP_TOKENIZER)(["is red"]).input_ids[0]
    assert siglip.tokenizer(["Is red."])[0, : len(ids)].tolist() == ids  # canonicalize: lower case, no punctuation
    assert ids[-1] == 1 and siglip.tokenizer(["is red"])[0, len(ids):].eq(1).all()  # </s>, padded with </s>
    text = siglip.model.text
    assert text.attn_mask is None and text.pool_type == "last" and siglip.model.logit_bias.item() == -10

    hftext = load_clip("cir-tiny-hftext")
    weights = load(str(hf_standins[HF_TEXT_MODEL] / "model.safetensors"))
    tower = hftext.model.text.transformer.state_dict()
    assert weights and all(torch.equal(tower[k.removeprefix("roberta.")], v) for k, v in weights.items())
    tokens = hftext.tokenizer(["is red"])
    assert tokens[0, 0] == 0 and 2 in tokens[0].tolist() and tokens[0, -1] == 1  # <s> ... </s> <pad>

    xlmr = load_clip("cir-tiny-xlmr")
    assert type(xlmr.model.text.transformer).__name__ == "XLMRobertaModel"
    weights = load(str(hf_standins[XLMR_TEXT_MODEL] / "model.safetensors"))
    tower = xlmr.model.text.transformer.state_dict()
    assert weights and all(torch.equal(tower[k.removeprefix("roberta.")], v) for k, v in weights.items())
    ids = AutoTokenizer.from_pretrained(XLMR_TEXT_MODEL)(["is red"]).input_ids[0]
    tokens = xlmr.tokenizer(["is red"])
    assert type(xlmr.tokenizer.tokenizer).__name__.startswith("XLMRobertaTokenizer")
    assert tokens[0, : len(ids)].tolist() == ids and ids[0] == 0 and ids[-1] == 2  # <s> ... </s>
    assert tokens[0, len(ids):].eq(1).all() and xlmr.model.text.config.pad_token_id == 1  # <pad>, masked out

    from timm.models import ConvNeXt, Eva

    assert isinstance(load_clip("cir-tiny-convnext").model.visual.trunk, ConvNeXt)
    eva = load_clip("cir-tiny-eva")
    trunk = eva.model.visual.trunk
    assert isinstance(trunk, Eva) and type(eva.model).__name__ == "CustomTextCLIP" and eva.input_size == 64
    # EVA02-CLIP's block: rotary position embedding, SwiGLU MLP with its norm, attention inner norm.
    assert trunk.rope is not None and trunk.global_pool == "token"
    block = trunk.blocks[0]
    assert type(block.mlp).__name__ == "SwiGLU" and not isinstance(block.attn.norm, torch.nn.Identity)


def _no_transformers(monkeypatch) -> None:
    import open_clip.hf_model

    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    monkeypatch.setattr(open_clip.hf_model, "transformers", None)  # as open_clip sets it when the import failed


def _no_timm(monkeypatch) -> None:
    import open_clip.timm_model

    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setattr(open_clip.timm_model, "timm", None)


@pytest.mark.parametrize("name, missing, expected", [
    ("cir-tiny-siglip", _no_transformers,
     "cir-tiny-siglip needs the Hugging Face tokenizer timm/ViT-B-16-SigLIP: pip install 'clip-cir[hf]' "
     "(transformers is not installed)"),
    ("cir-tiny-hftext", _no_transformers,
     "cir-tiny-hftext needs a Hugging Face text tower (hf-internal-testing/tiny-random-RobertaModel): "
     "pip install 'clip-cir[hf]' (transformers is not installed)"),
    ("cir-tiny-xlmr", _no_transformers,
     "cir-tiny-xlmr needs a Hugging Face text tower (hf-internal-testing/tiny-random-XLMRobertaModel): "
     "pip install 'clip-cir[hf]' (transformers is not installed)"),
    ("cir-tiny-eva", _no_timm,
     "cir-tiny-eva needs timm for its image tower (cir_eva02_pico_patch8_64): pip install timm "
     "(timm is not installed)"),
    ("cir-tiny-convnext", _no_timm,
     "cir-tiny-convnext needs timm for its image tower (convnext_atto): pip install timm (timm is not installed)"),
])
def test_missing_package_is_one_line_naming_what_to_install(name, missing, expected, cli, synth_root, hf_standins,
                                                            monkeypatch):
    missing(monkeypatch)
    result = cli("eval", *_common(synth_root), "--model", name)
    assert result.code == 2
    assert result.err.strip().splitlines() == [f"clip-cir: error: {expected}"]


def test_too_old_package_is_one_line_asking_for_a_newer_one(cli, synth_root, hf_standins, monkeypatch):
    import importlib.machinery
    import types

    old = types.ModuleType("transformers")  # installed, but without the name open_clip imports
    old.__spec__ = importlib.machinery.ModuleSpec("transformers", None)
    monkeypatch.setitem(sys.modules, "transformers", old)
    result = cli("eval", *_common(synth_root), "--model", "cir-tiny-siglip")
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert line.startswith("clip-cir: error: cir-tiny-siglip needs a newer transformers: "
                           "pip install -U 'clip-cir[hf]' (cannot import name 'AutoTokenizer'")


def test_missing_package_in_a_checkpoint_reload_is_one_line(cli, synth_root, hf_standins, tmp_path, monkeypatch):
    clip_cir.finetune(**stage1_options(synth_root, tmp_path, "s1", model="cir-tiny-siglip", epochs=1, batch_size=60,
                                       lr=1e-3))
    _no_transformers(monkeypatch)
    result = cli("eval", *_common(synth_root), "--pretrained", tmp_path / "s1")
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "clip-cir: error: cir-tiny-siglip needs the Hugging Face tokenizer timm/ViT-B-16-SigLIP: "
        "pip install 'clip-cir[hf]' (transformers is not installed)"]


def test_uncached_hugging_face_tokenizer_offline_is_one_line(cli, synth_root, tmp_path):
    config = json.loads((CONFIG_DIR / "cir-tiny-siglip.json").read_text())
    config["text_cfg"]["hf_tokenizer_name"] = "clip-cir-test/not-in-the-cache"
    (tmp_path / "cir-test-uncached.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "cir-test-uncached.json")
    result = cli("eval", *_common(synth_root), "--model", "cir-test-uncached")
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert line.startswith("clip-cir: error: cir-test-uncached: could not load the Hugging Face tokenizer "
                           "clip-cir-test/not-in-the-cache (offline: only the Hugging Face cache is read): ")


def test_two_processes_train_a_siglip_style_model(synth_root, hf_standins, tmp_path):
    """DDP needs every parameter it trains to take part in the loss: SigLIP's logit bias (like
    CLIP's logit scale and CoCa's caption decoder) is not part of the method's loss, so stage 1
    leaves it frozen and the text tower trains on 2 processes."""
    launch_stage1(command_line(stage1_options(synth_root, tmp_path, "ddp", model="cir-tiny-siglip", encoder="text",
                                              epochs=1, validation_frequency=5, cpu=True)), processes=2)
    trained = load_file(str(tmp_path / "ddp" / "last" / "clip.safetensors"))
    start = initial_weights("cir-tiny-siglip")
    assert torch.equal(trained["logit_bias"], start["logit_bias"])
    assert any(_changed(start, trained, "text")) and not any(_changed(start, trained, "image"))


def test_two_processes_pretrain_a_siglip_style_model(synth_root, hf_standins, tmp_path):
    """`clip-cir pretrain` uses CLIP's loss, in which SigLIP's logit bias takes no part: it stays
    frozen, so DDP (which needs every parameter it trains in the loss) runs on 2 processes."""
    import subprocess

    args = ["pretrain", "--train-data", synth_root / "pretrain_captions.csv", "--model", "cir-tiny-siglip",
            "--epochs", "1", "--batch-size", "16", "--output-dir", tmp_path, "--experiment-name", "ddp",
            "--num-workers", "0", "--no-progress", "--cpu"]
    cmd = [sys.executable, *ddp_launcher(2), "-m", "clip_cir.apps.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2 |" in result.stderr
    trained = load_file(str(tmp_path / "ddp" / "last" / "clip.safetensors"))
    start = initial_weights("cir-tiny-siglip")
    assert torch.equal(trained["logit_bias"], start["logit_bias"])
    assert any(_changed(start, trained, "text")) and any(_changed(start, trained, "image"))
