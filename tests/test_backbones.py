"""Every backbone family through the toolkit, offline, on tiny configs: ResNet, ViT, SigLIP-style
(Hugging Face tokenizer, no causal mask, last-token pooling, logit bias), Hugging Face text towers
(RoBERTa, and multilingual XLM-RoBERTa as in `xlm-roberta-base-ViT-B-32`), ConvNeXt and EVA02
(timm image towers). Stage 1 (text and both towers), stage 2 and
`clip-cir eval` of what they wrote; text trimming exact or off per family; a missing optional
package or an uncached Hugging Face repository as one error line."""

from __future__ import annotations

import json
import sys

import open_clip
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from clip_cir.models.clip import CONFIG_DIR, load_clip
from clip_cir.models.towers import can_trim_text, encode_text, trim_tokens
from clip_cir.training.run import seed_everything

MATRIX = ["cir-tiny-rn", "cir-tiny-vit", "cir-tiny-siglip", "cir-tiny-hftext", "cir-tiny-xlmr", "cir-tiny-convnext",
          "cir-tiny-eva"]
"""Families run through eval, stage 1 and stage 2."""

TRIMS = {"cir-tiny-rn": True, "cir-tiny-vit": True, "cir-tiny-convnext": True,
         "cir-tiny-siglip": False, "cir-tiny-hftext": False, "cir-tiny-xlmr": False, "cir-tiny-eva": False}
"""Whether a family's text tower may be cut to the batch's longest caption: causal EOT-pooling
`CLIP` towers only. SigLIP (no causal mask, last-token pooling) and Hugging Face towers
(bidirectional) must not be; EVA's causal tower sits in a `CustomTextCLIP`, which is left at full
length."""

RECALL_KEYS = {f"recall_at{k}" for k in (1, 5, 10, 50)} | {f"recall_subset_at{k}" for k in (1, 2, 3)}
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


@pytest.mark.parametrize("name", MATRIX)
def test_family_trains_and_its_checkpoints_reload(name, cli, synth_root, hf_standins, tmp_path, monkeypatch):
    seed_everything(0)  # the runs' --seed: their random init (and a cached HF text tower) is this one
    start = load_clip(name).model.state_dict()
    stage1 = ["finetune", *_common(synth_root), "--model", name, "--epochs", "1", "--batch-size", "60",
              "--lr", "1e-3", "--output-dir", tmp_path, "--no-progress"]
    runs = {}
    for encoder in ("text", "both"):
        result = cli(*stage1, "--encoder", encoder, "--experiment-name", f"s1-{encoder}")
        assert result.code == 0, result.err
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

    result = cli("train-combiner", *_common(synth_root), "--pretrained", runs["text"] / "last", "--epochs", "1",
                 "--batch-size", "64", "--lr", "1e-3", "--output-dir", tmp_path, "--no-progress",
                 "--experiment-name", "s2")
    assert result.code == 0, result.err
    meta = json.loads((tmp_path / "s2" / "last" / "combiner.json").read_text())
    assert meta["clip_feature_dim"] == open_clip.get_model_config(name)["embed_dim"]
    _eval_equals_validation(cli, synth_root, tmp_path / "s2", tmp_path, "--pretrained", runs["text"] / "last",
                            "--combiner", tmp_path / "s2" / "last")


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
    from hf_standins import HF_TEXT_MODEL, SIGLIP_TOKENIZER, XLMR_TEXT_MODEL
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
    result = cli("finetune", *_common(synth_root), "--model", "cir-tiny-siglip", "--epochs", "1", "--batch-size", "60",
                 "--lr", "1e-3", "--output-dir", tmp_path, "--no-progress", "--experiment-name", "s1")
    assert result.code == 0, result.err
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
    from test_training import _launch, stage1_args

    args = stage1_args(synth_root, tmp_path, "ddp", "--encoder", "text", "--epochs", "1", "--validation-frequency",
                       "5", "--cpu")
    args[args.index("--model") + 1] = "cir-tiny-siglip"
    _launch(args, processes=2)
    trained = load_file(str(tmp_path / "ddp" / "last" / "clip.safetensors"))
    seed_everything(0)
    start = load_clip("cir-tiny-siglip").model.state_dict()
    assert torch.equal(trained["logit_bias"], start["logit_bias"])
    assert any(_changed(start, trained, "text")) and not any(_changed(start, trained, "image"))


def test_two_processes_pretrain_a_siglip_style_model(synth_root, hf_standins, tmp_path):
    """`clip-cir pretrain` uses CLIP's loss, in which SigLIP's logit bias takes no part: it stays
    frozen, so DDP (which needs every parameter it trains in the loss) runs on 2 processes."""
    import os
    import subprocess

    from test_training import ddp_launcher

    args = ["pretrain", "--train-data", synth_root / "pretrain_captions.csv", "--model", "cir-tiny-siglip",
            "--epochs", "1", "--batch-size", "16", "--output-dir", tmp_path, "--experiment-name", "ddp",
            "--num-workers", "0", "--no-progress", "--cpu"]
    cmd = [sys.executable, *ddp_launcher(2), "-m", "clip_cir.apps.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2 |" in result.stderr
    trained = load_file(str(tmp_path / "ddp" / "last" / "clip.safetensors"))
    seed_everything(0)
    start = load_clip("cir-tiny-siglip").model.state_dict()
    assert torch.equal(trained["logit_bias"], start["logit_bias"])
    assert any(_changed(start, trained, "text")) and any(_changed(start, trained, "image"))
