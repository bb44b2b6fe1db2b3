"""Zero-shot pseudo-word queries wherever queries are made: `eval`, `rank`, the Python API, the
demo and a hub export give the numbers of the composition written out by hand (φ(reference) as
the "$" token of the prompt, through the text tower), and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import demo_search, install_in_hub_cache

import clip_cir
from clip_cir.data import load_splits
from clip_cir.encoding.ranking import rank_split
from clip_cir.encoding.split_features import EncodeOptions, split_features
from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import split_metrics
from clip_cir.models.clip import load_clip
from clip_cir.models.pseudo_words import encode_with_pseudo_words, placeholder_token_id
from clip_cir.models.zero_shot import clip_identity, mapping_for, mapping_metadata, save_mapping

PROMPT = "a photo of $ that {caption}"


def _save_phi(clip, method: str, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    mapping = mapping_for(method, clip)
    save_mapping(path, mapping, mapping_metadata(mapping, clip_identity(clip)))
    return path


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    clip = load_clip(None, str(tiny_checkpoint))
    folder = tmp_path_factory.mktemp("phi")
    return {"clip": clip, "checkpoint": tiny_checkpoint,
            "searle": _save_phi(clip, "searle", folder / "searle.safetensors", 3)}


def _by_hand(clip, phi_path: Path, reference: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """The query written out: the prompt's tokens, φ(raw reference feature) in place of "$", the
    tower's feature, normalised; in batches of 256 as the composer runs."""
    from clip_cir.models.zero_shot import load_mapping

    mapping = load_mapping(phi_path)
    placeholder = placeholder_token_id(clip.tokenizer, "$")
    out = []
    with torch.no_grad():
        for start in range(0, len(captions), 256):
            prompts = [PROMPT.replace("{caption}", c) for c in captions[start:start + 256]]
            ids = clip.tokenize(prompts)
            pseudo = mapping(reference[start:start + 256])
            out.append(F.normalize(encode_with_pseudo_words(clip.model, ids, pseudo, placeholder), dim=-1))
    return torch.cat(out)


def test_eval_and_rank_with_a_zero_shot_network_equal_the_composition_by_hand(setup, cli, synth_root, tmp_path):
    clip = setup["clip"]
    out = tmp_path / "metrics.json"
    result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, "--pretrained", setup["checkpoint"],
                 "--zero-shot", setup["searle"], "--output", out, "--no-cache")
    assert result.code == 0, result.err
    split = load_splits("cirr", synth_root, "val")[0]
    features = split_features(clip, split, EncodeOptions(transform=clip.image_transform(), progress=False))
    queries = _by_hand(clip, setup["searle"], features.reference, [q.eval_caption for q in split.queries])
    ranking = rank_split(split, queries, F.normalize(features.gallery, dim=-1), k=split.rank_depth)
    expected = split_metrics(split, ranking)
    measured = json.loads(out.read_text())
    assert {k: measured[k] for k in expected} == {k: round(v, 4) for k, v in expected.items()}
    # rank records the composition and gives the same first results.
    ranked = tmp_path / "ranking.json"
    result = cli("rank", "--dataset", "cirr", "--data-root", synth_root, "--pretrained", setup["checkpoint"],
                 "--zero-shot", setup["searle"], "--output", ranked, "--top-k", "3", "--no-cache")
    assert result.code == 0, result.err
    written = json.loads(ranked.read_text())
    assert written["combining"] == "searle" and written["prompt"] == PROMPT
    assert written["zero_shot"] == str(setup["searle"])
    names = list(split.gallery)
    first = [[names[i] for i in row[:3]] for row in ranking.indices[:5].tolist()]
    assert [[r["name"] for r in q["ranking"]] for q in written["queries"][:5]] == first


def test_the_api_composes_and_searches_as_written_out(setup, synth_root):
    clip = setup["clip"]
    model = clip_cir.load(setup["checkpoint"], zero_shot=setup["searle"], device="cpu", cache=False, progress=False)
    split = load_splits("cirr", synth_root, "val")[0]
    references = [split.gallery[q.reference] for q in split.queries[:4]]
    captions = [q.eval_caption for q in split.queries[:4]]
    raw = model.image_features(references)
    expected = _by_hand(clip, setup["searle"], raw, captions)
    assert torch.allclose(model.compose(references, captions), expected, atol=1e-6)
    gallery = model.index(split)
    found = gallery.search(split.queries[0].reference, captions[0], k=5)
    scores = F.normalize(gallery.features, dim=-1) @ expected[0]
    scores[gallery.index_of[split.queries[0].reference]] = -float("inf")
    top = scores.topk(5)
    assert [n for n, _ in found] == [gallery.names[i] for i in top.indices.tolist()]
    assert [s for _, s in found] == pytest.approx(top.values.tolist(), abs=1e-5)
    with pytest.raises(CIRError, match="reads the captions themselves"):
        model.compose_features(raw, model.text_features(captions))


def test_a_demo_on_a_photo_folder_serves_zero_shot_queries(setup, synth_root, tmp_path):
    pytest.importorskip("flask")
    from clip_cir.apps.demo.app import _build_app
    from clip_cir.params import demo_parser

    photos = tmp_path / "photos"
    for i, path in enumerate(sorted((synth_root / "cirr_dataset" / "dev").glob("*.png"))[:12]):
        target = photos / f"shelf{i % 3}" / "deep" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    args = demo_parser().parse_args(["--gallery-dir", str(photos), "--pretrained", str(setup["checkpoint"]),
                                     "--zero-shot", str(setup["searle"]), "--no-cache", "--num-workers", "0"])
    client = _build_app(args).test_client()
    assert "searle" in client.get("/api/info").get_json()["combining"]
    model = clip_cir.load(setup["checkpoint"], zero_shot=setup["searle"], device="cpu", cache=False, progress=False)
    gallery = model.index(photos)
    reference = gallery.names[0]
    answer = demo_search(client, reference=reference, caption="make it red", k=4).get_json()
    expected = gallery.search(reference, "make it red", k=4)
    assert [r["name"] for r in answer["results"]] == [n for n, _ in expected]


def test_an_export_with_phi_loads_from_the_hub_as_its_source(setup, synth_root, tmp_path):
    from clip_cir.apps.cli import main

    main(["export", "--pretrained", str(setup["checkpoint"]), "--zero-shot", str(setup["searle"]),
          "--output-dir", str(tmp_path / "zs")])
    assert (tmp_path / "zs" / "phi.safetensors").is_file()
    install_in_hub_cache(tmp_path / "zs", "clip-cir-test/zero-shot", "a" * 40)
    from_hub = clip_cir.load("hf-hub:clip-cir-test/zero-shot", device="cpu", cache=False, progress=False)
    source = clip_cir.load(setup["checkpoint"], zero_shot=setup["searle"], device="cpu", cache=False, progress=False)
    split = load_splits("cirr", synth_root, "val")[0]
    references = [split.gallery[q.reference] for q in split.queries[:3]]
    captions = [q.eval_caption for q in split.queries[:3]]
    assert from_hub.combine.name == "searle"
    assert torch.allclose(from_hub.compose(references, captions), source.compose(references, captions), atol=1e-6)


@pytest.mark.parametrize("case, message", [
    ("no-network", "--combining pic2word needs --zero-shot RUN"),
    ("other-method", "is a searle mapping network, not pic2word"),
    ("no-placeholder", "has no '$'"),
    ("other-clip", "was trained on"),
    ("with-combiner", "give --combiner or --zero-shot, not both"),
])
def test_bad_zero_shot_input_is_one_line(case, message, setup, cli, synth_root, tmp_path):
    args = ["eval", "--dataset", "cirr", "--data-root", synth_root, "--pretrained", setup["checkpoint"], "--no-cache"]
    if case == "no-network":
        args += ["--combining", "pic2word"]
    elif case == "other-method":
        args += ["--combining", "pic2word", "--zero-shot", setup["searle"]]
    elif case == "no-placeholder":
        args += ["--zero-shot", setup["searle"], "--prompt-template", "a photo that {caption}"]
    elif case == "other-clip":
        other = load_clip(None, str(setup["checkpoint"]))
        with torch.no_grad():
            next(other.model.parameters()).add_(0.5)
        args += ["--zero-shot", _save_phi(other, "searle", tmp_path / "other.safetensors", 4)]
    else:
        args += ["--zero-shot", setup["searle"], "--combiner", setup["searle"]]
    result = cli(*args)
    assert result.code == 2 and len(result.error_lines) == 1 and message in result.error_lines[0], result.err


@pytest.mark.parametrize("method", ["searle", "pic2word"])
def test_fashioniq_captions_compose_both_ways_as_each_method_evaluates_them(method, setup, synth_root, tmp_path):
    """SEARLE and LinCIR average the normalised features of "C0 and c1" and "C1 and c0"; Pic2Word's
    prompt holds the captions reversed. Written out from the raw captions."""
    from clip_cir.evaluation.evaluate import predict_queries
    from clip_cir.models.zero_shot import load_mapping, zero_shot_composer

    clip = setup["clip"]
    phi = setup["searle"] if method == "searle" else _save_phi(clip, "pic2word", tmp_path / "p2w.safetensors", 5)
    split = load_splits("fashioniq", synth_root, "val", ["dress"])[0]
    split.queries = split.queries[:6]
    features = split_features(clip, split, EncodeOptions(transform=clip.image_transform(), progress=False))
    queries = predict_queries(features, zero_shot_composer(clip, phi))
    mapping, placeholder = load_mapping(phi), placeholder_token_id(clip.tokenizer, "$")
    template = "a photo of $ , {}" if method == "pic2word" else "a photo of $ that {}"

    def encode(texts: list[str]) -> torch.Tensor:
        ids = clip.tokenize([template.format(t) for t in texts])
        with torch.no_grad():
            pseudo = mapping(features.reference)
            return F.normalize(encode_with_pseudo_words(clip.model, ids, pseudo, placeholder), dim=-1)

    def joined(a: str, b: str) -> str:
        return f"{a.strip('.?, ').capitalize()} and {b.strip('.?, ')}"

    backward = encode([joined(q.captions[1], q.captions[0]) for q in split.queries])
    if method == "pic2word":
        expected = backward
    else:
        forward = encode([joined(q.captions[0], q.captions[1]) for q in split.queries])
        expected = F.normalize((forward + backward) / 2, dim=-1)
    assert torch.allclose(queries, expected, atol=1e-6)
