"""The CLIP loader: OpenAI-format / published checkpoints without a model name, precision kept,
open_clip state dicts, our safetensors, refusal of code-carrying pickles, clear errors."""

import json

import open_clip
import pytest
import torch

from clip_cir.errors import CIRError
from clip_cir.models.clip import infer_openai_config, load_clip
from clip_cir.models.files import save_weights
from clip_cir.models.towers import tower_fingerprint

TEXTS = ["make the red circle blue", "add a small green square at the top left", "remove the star"]


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 64, 64, generator=g)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["cir-tiny-vit", "cir-tiny-rn"])
def test_architecture_inferred_from_openai_weights(name, make_tiny_clip):
    model = make_tiny_clip(name)
    config = open_clip.get_model_config(name)
    inferred = infer_openai_config(model.state_dict())
    assert inferred["embed_dim"] == config["embed_dim"]
    assert inferred["quick_gelu"] is True
    for key in ("layers", "width", "image_size", "patch_size"):
        assert inferred["vision_cfg"][key] == config["vision_cfg"][key], key
    for key in ("context_length", "vocab_size", "width", "heads", "layers"):
        assert inferred["text_cfg"][key] == config["text_cfg"][key], key


def test_published_checkpoint_loads_without_a_name_and_gives_the_same_features(tiny_clip, tiny_checkpoint):
    loaded = load_clip(None, str(tiny_checkpoint))
    assert loaded.model_name == "openai-inferred" and loaded.source == str(tiny_checkpoint)
    assert loaded.embed_dim == 128 and loaded.input_size == 64
    assert _same_weights(loaded.model, tiny_clip)
    with torch.no_grad():
        x = _images()
        assert torch.allclose(loaded.model.encode_image(x), tiny_clip.encode_image(x), atol=1e-5)
        tokens = open_clip.get_tokenizer("cir-tiny-vit")(TEXTS)
        assert torch.equal(loaded.tokenizer(TEXTS), tokens)
        assert torch.allclose(loaded.model.encode_text(tokens), tiny_clip.encode_text(tokens), atol=1e-5)
    assert loaded.mean_std == ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def test_float32_checkpoint_is_bit_identical(tmp_path, make_tiny_clip):
    model = make_tiny_clip("cir-tiny-vit", seed=3)
    state = model.state_dict()
    # These weights would change if they passed through float16 on the way in.
    assert any(not torch.equal(v, v.half().float()) for v in state.values() if v.is_floating_point())
    path = tmp_path / "f32.pt"
    torch.save({"epoch": 3, "CLIP": state}, path)
    loaded = load_clip(None, str(path)).model.state_dict()
    for key, value in state.items():
        assert loaded[key].dtype == torch.float32, key
        assert torch.equal(loaded[key], value), key


def test_float16_checkpoint_upcasts_exactly(tmp_path, make_tiny_clip):
    state = {k: v.half() if v.is_floating_point() else v for k, v in make_tiny_clip(seed=4).state_dict().items()}
    torch.save(state, tmp_path / "f16.pt")
    loaded = load_clip(None, str(tmp_path / "f16.pt")).model.state_dict()
    for key, value in state.items():
        assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], value.float()), key


def test_bare_open_clip_state_dict_with_model_name(tmp_path, make_tiny_clip):
    model = make_tiny_clip("cir-tiny-rn", seed=1)
    path = tmp_path / "rn.pth"
    torch.save(model.state_dict(), path)
    loaded = load_clip("cir-tiny-rn", str(path))
    assert loaded.model_name == "cir-tiny-rn" and loaded.describe() == f"cir-tiny-rn ({path})"
    assert _same_weights(loaded.model, model)
    # open_clip's own {"state_dict": ...} wrapping with DDP "module." prefixes loads too.
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ddp.pt")
    assert _same_weights(load_clip("cir-tiny-rn", str(tmp_path / "ddp.pt")).model, model)
    x = _images(2)
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_image(x), model.encode_image(x), atol=1e-5)


def test_our_safetensors_loads_without_a_name(tmp_path, make_tiny_clip):
    model = make_tiny_clip("cir-tiny-vit", seed=2)
    run = tmp_path / "run"
    meta = {"model_name": "cir-tiny-vit", "model_config": open_clip.get_model_config("cir-tiny-vit"), "epoch": 1}
    save_weights(run / "best" / "clip.safetensors", model.state_dict(), meta)
    assert json.loads((run / "best" / "clip.json").read_text())["model_name"] == "cir-tiny-vit"
    for source in (run / "best" / "clip.safetensors", run):  # the file, or its run directory
        loaded = load_clip(None, str(source))
        assert loaded.model_name == "cir-tiny-vit"
        assert loaded.source == str(run / "best" / "clip.safetensors")
        assert _same_weights(loaded.model, model)


def test_code_carrying_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"epoch": 0, "CLIP": Payload()}, path)
    with pytest.raises(CIRError) as info:
        load_clip(None, str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: refused to load")
    assert "weights_only=True" in message and "open" in message
    assert "\n" not in message and "\x1b" not in message
    assert not marker.exists()


def test_unreadable_checkpoints(tmp_path, make_tiny_clip):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CIRError, match=f"^{garbage}: not a readable weights checkpoint"):
        load_clip(None, str(garbage))
    with pytest.raises(CIRError, match=f"^{tmp_path / 'absent.pt'}: checkpoint not found"):
        load_clip(None, str(tmp_path / "absent.pt"))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 64)
    with pytest.raises(CIRError, match=f"^{bad_st}: not a readable safetensors file"):
        load_clip(None, str(bad_st))
    torch.save({"foo": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CIRError, match="cannot infer the architecture from these weights; pass --model NAME"):
        load_clip(None, str(tmp_path / "other.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CIRError, match="checkpoint holds a list, expected a state dict"):
        load_clip(None, str(tmp_path / "list.pt"))
    torch.save(make_tiny_clip("cir-tiny-vit").state_dict(), tmp_path / "vit.pt")
    with pytest.raises(CIRError, match="weights do not fit the model"):
        load_clip("cir-tiny-rn", str(tmp_path / "vit.pt"))
    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(CIRError, match="directory holds no CLIP checkpoint"):
        load_clip(None, str(tmp_path / "emptyrun"))


def test_unknown_names_suggest_close_matches():
    with pytest.raises(CIRError, match="unknown open_clip model 'cir-tiny-vt'; did you mean cir-tiny-vit"):
        load_clip("cir-tiny-vt")
    with pytest.raises(CIRError, match="did you mean .*ViT-B-32"):
        load_clip("ViT-B-3")
    with pytest.raises(CIRError, match="unknown pretrained tag 'laion' for cir-tiny-vit and no such file"):
        load_clip("cir-tiny-vit", "laion")


def test_tokenizer_and_preprocessing_come_with_named_model():
    loaded = load_clip("cir-tiny-vit")
    assert loaded.source == "random-init" and loaded.input_size == 64
    assert loaded.tokenizer(["a"]).shape == (1, 32)  # the config's context length
    from PIL import Image
    assert loaded.clip_preprocess(Image.new("RGB", (90, 40))).shape == (3, 64, 64)


def test_tower_fingerprint_follows_each_tower(make_tiny_clip):
    model = make_tiny_clip(seed=0)
    image, text = tower_fingerprint(model, "image"), tower_fingerprint(model, "text")
    assert image == tower_fingerprint(make_tiny_clip(seed=0), "image")
    with torch.no_grad():
        model.token_embedding.weight[0, 0] += 1e-3
    text2 = tower_fingerprint(model, "text")
    assert tower_fingerprint(model, "image") == image and text2 != text
    with torch.no_grad():
        model.visual.conv1.weight[0, 0, 0, 0] += 1e-3
    assert tower_fingerprint(model, "image") != image and tower_fingerprint(model, "text") == text2
    with torch.no_grad():  # the logit scale belongs to no tower: features do not depend on it
        model.logit_scale += 1
    assert tower_fingerprint(model, "text") == text2


def test_cli_eval_of_published_checkpoint_needs_no_model_name(cli, synth_root, tiny_checkpoint, tmp_path):
    """`clip-cir eval --pretrained {"epoch": 0, "CLIP": ...}` without --model infers the architecture,
    and scores exactly like the same weights loaded into the named architecture (no shared cache)."""
    common = ["eval", "--dataset", "fashioniq", "--data-root", synth_root, "--fashioniq-categories", "dress",
              "shirt", "--num-workers", "0"]
    inferred = cli(*common, "--pretrained", tiny_checkpoint, "--cache-dir", tmp_path / "c1",
                   "--output", tmp_path / "inferred.json")
    assert inferred.code == 0, inferred.err
    assert f"model: openai-inferred ({tiny_checkpoint})" in inferred.err
    named = cli(*common, "--model", "cir-tiny-vit", "--pretrained", tiny_checkpoint, "--cache-dir", tmp_path / "c2",
                "--output", tmp_path / "named.json")
    assert named.code == 0, named.err
    assert f"model: cir-tiny-vit ({tiny_checkpoint})" in named.err
    first, second = (json.loads((tmp_path / f).read_text()) for f in ("inferred.json", "named.json"))
    assert list(first) == ["dress_recall_at10", "dress_recall_at50", "shirt_recall_at10", "shirt_recall_at50",
                           "average_recall_at10", "average_recall_at50"]
    assert first == second
