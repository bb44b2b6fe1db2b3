"""Zero-shot mapping networks and the composer: each φ is its authors' network at their sizes
(its forward written out by hand), a saved φ reads back with its method, sizes, prompt and CLIP,
published φ files load, another CLIP is refused in one line, templates are checked, and the
composer's queries are the normalised pseudo-word prompt features, batch by batch."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clip_cir.errors import CIRError
from clip_cir.models.pseudo_words import encode_with_pseudo_words
from clip_cir.models.zero_shot import (
    PROMPT_TEMPLATES,
    ZeroShotComposer,
    build_mapping,
    check_mapping_fits,
    check_template,
    clip_identity,
    load_mapping,
    mapping_for,
    mapping_metadata,
    save_mapping,
)

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def clips():
    """Two `cir-tiny-vit` LoadedCLIPs with different random weights, and a `cir-tiny-rn`."""
    from clip_cir.models.clip import load_clip

    loaded = {}
    for key, name, seed in (("vit", "cir-tiny-vit", 0), ("vit-other", "cir-tiny-vit", 1), ("rn", "cir-tiny-rn", 0)):
        torch.manual_seed(seed)
        loaded[key] = load_clip(name)
    return loaded


def _features(rows: int, dim: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_pic2word_is_im2text_two_relu_blocks_of_512_then_a_linear_to_the_token_width():
    mapping = build_mapping("pic2word", 96, 40).eval()
    assert {k: tuple(v.shape) for k, v in mapping.state_dict().items()} == {
        "layers.0.0.weight": (512, 96), "layers.0.0.bias": (512,), "layers.1.0.weight": (512, 512),
        "layers.1.0.bias": (512,), "fc_out.weight": (40, 512), "fc_out.bias": (40,)}
    assert mapping.options == {"hidden_dim": 512, "layers": 2, "dropout": 0.1}
    w = mapping.state_dict()
    x = _features(3, 96)
    h = torch.relu(x @ w["layers.0.0.weight"].T + w["layers.0.0.bias"])  # dropout is off in eval mode
    h = torch.relu(h @ w["layers.1.0.weight"].T + w["layers.1.0.bias"])
    torch.testing.assert_close(mapping(x), h @ w["fc_out.weight"].T + w["fc_out.bias"], **TOL)


@pytest.mark.parametrize("method", ["searle", "lincir"])
@torch.no_grad()
def test_searle_and_lincir_phi_is_three_linears_four_times_wider_with_gelu(method):
    mapping = build_mapping(method, 24, 40).eval()
    assert mapping.method == method and mapping.options == {"hidden_dim": 96, "dropout": 0.5}
    w = mapping.state_dict()
    assert [tuple(w[f"layers.{i}.weight"].shape) for i in (0, 3, 6)] == [(96, 24), (96, 96), (40, 96)]
    x = _features(3, 24)
    h = F.gelu(x @ w["layers.0.weight"].T + w["layers.0.bias"])
    h = F.gelu(h @ w["layers.3.weight"].T + w["layers.3.bias"])
    torch.testing.assert_close(mapping(x), h @ w["layers.6.weight"].T + w["layers.6.bias"], **TOL)
    with pytest.raises(CIRError, match=r"^unknown zero-shot method 'tirg' \(choose from pic2word, searle, lincir\)$"):
        build_mapping("tirg", 24, 40)


def test_templates_need_the_placeholder_as_a_word_and_the_caption_once():
    assert check_template(PROMPT_TEMPLATES["pic2word"]) == "a photo of $ , {caption}"
    assert check_template("{caption} , like *", "*") == "{caption} , like *"
    with pytest.raises(CIRError, match=r"^prompt template 'a photo that \{caption\}' has no '\$' \(the placeholder"):
        check_template("a photo that {caption}")
    with pytest.raises(CIRError, match=r"^prompt template 'a photo of \$, \{caption\}' must hold '\$' once, as a word"):
        check_template("a photo of $, {caption}")
    with pytest.raises(CIRError, match=r"must hold '\$' once"):
        check_template("$ and $ {caption}")
    with pytest.raises(CIRError, match=r"^prompt template 'a photo of \$' must hold \{caption\} once \(where the"):
        check_template("a photo of $")


def test_a_saved_phi_reads_back_with_its_method_sizes_prompt_and_clip(clips, tmp_path):
    clip = clips["vit"]
    torch.manual_seed(0)
    mapping = mapping_for("lincir", clip, dropout=0.25)
    meta = mapping_metadata(mapping, clip_identity(clip), template="a photo of $ with {caption}")
    save_mapping(tmp_path / "phi.safetensors", mapping, meta)
    beside = json.loads((tmp_path / "phi.json").read_text())
    assert beside["method"] == "lincir" and beside["prompt_template"] == "a photo of $ with {caption}"
    assert beside["clip_model_name"] == "cir-tiny-vit" and beside["clip_architecture"] == clip.architecture
    assert (beside["clip_feature_dim"], beside["token_dim"]) == (128, 128)
    assert beside["mapping_options"] == {"hidden_dim": 512, "dropout": 0.25}

    back = load_mapping(tmp_path)  # a folder means the φ file in it
    assert type(back).__name__ == "LinCIRMapping" and not back.training
    assert back.options == mapping.options and back.placeholder == "$"
    assert back.prompt_template == "a photo of $ with {caption}"
    assert back.trained_on["clip_text_fingerprint"] == clip_identity(clip)["clip_text_fingerprint"]
    for key, value in mapping.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)
    check_mapping_fits(back, clip)
    assert str(ZeroShotComposer(clip, back)) == "lincir pseudo-word ('a photo of $ with {caption}')"


def test_phi_refuses_another_clip_in_one_line(clips, tmp_path):
    mapping = mapping_for("searle", clips["vit"])
    save_mapping(tmp_path / "phi.safetensors", mapping, mapping_metadata(mapping, clip_identity(clips["vit"])))
    back = load_mapping(tmp_path / "phi.safetensors")
    with pytest.raises(CIRError, match=r"^the searle mapping network was trained on cir-tiny-vit \(random-init, "
                                       r"VisionTransformer 64px, CLIP text, 128-d\), not on cir-tiny-vit "
                                       r"\(random-init\) \(VisionTransformer 64px, CLIP text, 128-d\): load it"):
        ZeroShotComposer(clips["vit-other"], back)  # same architecture, other weights
    with pytest.raises(CIRError, match=r"^the searle mapping network maps 128-d features to 128-d token embeddings, "
                                       r"but cir-tiny-rn \(random-init\) has 64-d features and 64-d token"):
        check_mapping_fits(back, clips["rn"])


def test_published_phi_files_load_by_their_shapes(tmp_path):
    searle = build_mapping("searle", 24, 40)
    torch.save({"epoch": 3, "Phi": searle.state_dict()}, tmp_path / "phi_best.pt")
    back = load_mapping(tmp_path / "phi_best.pt")
    assert back.method == "searle" and back.dims == {"clip_feature_dim": 24, "token_dim": 40, "hidden_dim": 96,
                                                     "dropout": 0.5}
    assert back.trained_on is None and back.prompt_template is None
    pic2word = build_mapping("pic2word", 24, 40, hidden_dim=64, layers=3)
    state = {f"module.{k}": v for k, v in pic2word.state_dict().items()}  # saved from DataParallel
    torch.save({"epoch": 1, "state_dict_img2text": state}, tmp_path / "pic2word.pt")
    back = load_mapping(tmp_path / "pic2word.pt")
    assert back.method == "pic2word" and back.options == {"hidden_dim": 64, "layers": 3, "dropout": 0.1}
    torch.testing.assert_close(back(torch.ones(1, 24)), pic2word.eval()(torch.ones(1, 24)))
    torch.save({"Combiner": {}}, tmp_path / "other.pt")
    with pytest.raises(CIRError, match=r"other.pt: no φ in this file \(expected our safetensors"):
        load_mapping(tmp_path / "other.pt")


@torch.no_grad()
def test_the_composer_gives_the_normalised_prompt_features_batch_by_batch(clips):
    clip = clips["vit"]
    torch.manual_seed(0)
    mapping = mapping_for("pic2word", clip).eval()
    composer = ZeroShotComposer(clip, mapping, batch_size=2)
    captions = ["is red", "has a $5 hat", "x", "is  bigger", "has two circles"]
    prompts = ["a photo of $ , is red", "a photo of $ , has a 5 hat", "a photo of $ , x", "a photo of $ , is bigger",
               "a photo of $ , has two circles"]
    assert composer.prompts(captions) == prompts
    images = _features(5, 128)
    got = composer(images, captions)
    ids = clip.tokenizer(prompts)
    expected = F.normalize(encode_with_pseudo_words(clip.model, ids, mapping(images), 259), dim=-1)
    torch.testing.assert_close(got, expected, **TOL)
    assert got.shape == (5, 128) and torch.allclose(got.norm(dim=-1), torch.ones(5))
    assert composer(images[:0], []).shape == (0, 128)


def test_a_prompt_that_loses_its_placeholder_is_refused_in_one_line(clips):
    mapping = mapping_for("searle", clips["vit"])
    composer = ZeroShotComposer(clips["vit"], mapping, template="{caption} , like $")
    long = " ".join(["red"] * 40)  # past the 32-token context: the placeholder is cut off
    with pytest.raises(CIRError, match=r"^prompt 'red red .* , like \$' holds the placeholder token 0 times after "
                                       r"tokenising, not once \(a caption too long"):
        composer(_features(2, 128), ["is red", long])
    with pytest.raises(CIRError, match=r"^2 reference images but 1 captions$"):
        composer(_features(2, 128), ["is red"])
