"""The Combiner: the published architecture and parameter names, checkpoints in both formats."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clip_cir.models.combiner import Combiner
from clip_cir.models.compositors.loading import load_compositor
from clip_cir.models.files import save_weights

PUBLISHED_KEYS = {
    "text_projection_layer.weight", "text_projection_layer.bias", "image_projection_layer.weight",
    "image_projection_layer.bias", "combiner_layer.weight", "combiner_layer.bias", "output_layer.weight",
    "output_layer.bias", "dynamic_scalar.0.weight", "dynamic_scalar.0.bias", "dynamic_scalar.3.weight",
    "dynamic_scalar.3.bias",
}


def reference_forward(sd: dict, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """docs/method.md#stage-2-the-combiner written out with the raw weights (eval mode: dropout is the identity)."""
    def linear(x, name):
        return x @ sd[f"{name}.weight"].t() + sd[f"{name}.bias"]
    tp = F.relu(linear(text, "text_projection_layer"))
    ip = F.relu(linear(image, "image_projection_layer"))
    raw = torch.cat((tp, ip), -1)
    c = F.relu(linear(raw, "combiner_layer"))
    lam = torch.sigmoid(linear(F.relu(linear(raw, "dynamic_scalar.0")), "dynamic_scalar.3"))
    return F.normalize(linear(c, "output_layer") + lam * text + (1 - lam) * image, dim=-1)


def test_parameter_names_and_shapes_are_the_published_ones():
    combiner = Combiner(640, 2560, 5120)
    shapes = {k: tuple(v.shape) for k, v in combiner.state_dict().items()}
    assert set(shapes) == PUBLISHED_KEYS
    assert shapes["text_projection_layer.weight"] == (2560, 640)
    assert shapes["combiner_layer.weight"] == (5120, 5120)
    assert shapes["dynamic_scalar.3.weight"] == (1, 5120)
    assert shapes["output_layer.weight"] == (640, 5120)


def test_forward_is_the_formula():
    torch.manual_seed(0)
    combiner = Combiner(16, 24, 40).eval()
    image, text = torch.randn(5, 16), torch.randn(5, 16)
    expected = reference_forward(combiner.state_dict(), image, text)
    assert torch.allclose(combiner(image, text), expected, atol=1e-6)
    assert torch.allclose(combiner(image, text).norm(dim=-1), torch.ones(5))


def test_train_mode_forward_drops_out_where_the_method_does():
    """docs/method.md#stage-2-the-combiner in train mode: dropout 0.5 on the two projections, on the combiner layer's
    output and inside the dynamic scalar (after its ReLU), drawn in that order from one seed."""
    torch.manual_seed(0)
    combiner = Combiner(16, 24, 40).train()
    sd = combiner.state_dict()
    image, text = torch.randn(5, 16), torch.randn(5, 16)

    def linear(x, name):
        return x @ sd[f"{name}.weight"].t() + sd[f"{name}.bias"]

    def drop(x):
        return F.dropout(x, 0.5, training=True)

    torch.manual_seed(7)
    tp = drop(F.relu(linear(text, "text_projection_layer")))
    ip = drop(F.relu(linear(image, "image_projection_layer")))
    raw = torch.cat((tp, ip), -1)
    c = drop(F.relu(linear(raw, "combiner_layer")))
    lam = torch.sigmoid(linear(drop(F.relu(linear(raw, "dynamic_scalar.0"))), "dynamic_scalar.3"))
    expected = F.normalize(linear(c, "output_layer") + lam * text + (1 - lam) * image, dim=-1)
    torch.manual_seed(7)
    out = combiner(image, text)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, reference_forward(sd, image, text), atol=1e-3)  # dropout did act


def test_published_checkpoint_loads_unchanged_and_matches_ours(tmp_path):
    torch.manual_seed(1)
    trained = Combiner(32, 64, 96)
    published = tmp_path / "combiner_published.pt"
    torch.save({"epoch": 299, "Combiner": trained.state_dict()}, published)
    ours = tmp_path / "combiner.safetensors"
    save_weights(ours, trained.state_dict(), {"kind": "combiner"})

    from_published, from_ours = load_compositor(published), load_compositor(ours)
    assert from_published.dims == {"clip_feature_dim": 32, "projection_dim": 64, "hidden_dim": 96}
    image, text = torch.randn(7, 32), torch.randn(7, 32)
    expected = reference_forward(trained.state_dict(), image, text)
    assert torch.allclose(from_published(image, text), expected, atol=1e-6)
    assert torch.equal(from_published(image, text), from_ours(image, text))
    assert not from_published.training  # loaded for inference: dropout off


def test_published_combiner_through_eval_equals_ours(synth_root, tmp_path, cli, make_tiny_clip):
    """`clip-cir eval --combiner` gives the same metrics from either checkpoint format."""
    import json

    clip_ckpt = tmp_path / "clip.pt"
    torch.save({"epoch": 0, "CLIP": make_tiny_clip().state_dict()}, clip_ckpt)
    torch.manual_seed(2)
    trained = Combiner(128, 256, 512)
    torch.save({"epoch": 3, "Combiner": trained.state_dict()}, tmp_path / "published.pt")
    save_weights(tmp_path / "ours.safetensors", trained.state_dict(), {"kind": "combiner"})
    results = []
    for name in ("published.pt", "ours.safetensors"):
        out = tmp_path / f"{name}.json"
        result = cli("eval", "--dataset", "cirr", "--data-root", str(synth_root), "--pretrained", str(clip_ckpt),
                     "--combiner", str(tmp_path / name), "--num-workers", "0", "--output", str(out))
        assert result.code == 0, result.err
        results.append(json.loads(out.read_text()))
    assert results[0] == results[1]


def test_combiner_of_the_wrong_size_is_refused(synth_root, tmp_path, cli):
    torch.save({"epoch": 0, "Combiner": Combiner(640, 2560, 5120).state_dict()}, tmp_path / "rn50x4.pt")
    result = cli("eval", "--dataset", "cirr", "--data-root", str(synth_root), "--model", "cir-tiny-vit",
                 "--combiner", str(tmp_path / "rn50x4.pt"), "--num-workers", "0")
    assert result.code == 2
    assert "Combiner expects 640-d CLIP features" in result.err and "128-d" in result.err
