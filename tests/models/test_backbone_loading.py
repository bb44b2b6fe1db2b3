"""Loading backbones as open_clip does, for the families whose preprocessing, tokenizer or weights
differ from OpenAI's CLIP: a pretrained tag's own mean/std and resize mode, which our checkpoints
must carry on; a Hub repository in open_clip's layout (SigLIP-style: Hugging Face tokenizer named
by its config, logit bias, its own preprocessing) and a checkpoint trained from it, reloaded
without the repository; open_clip checkpoints of Hugging Face text towers as open_clip loads them;
Hub-hosted tags fetched without huggingface_hub's retries, failing in one line when not at hand."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from helpers import REPO, install_in_hub_cache
from PIL import Image
from safetensors.torch import save_file

from clip_cir.models.clip import load_clip
from clip_cir.models.files import save_weights
from clip_cir.training.run import clip_metadata

TEXTS = ["is red and has a small circle", "Make the large star BLUE.", "x"]
SIGLIP_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                     "resize_mode": "squash"}
"""What open_clip's SigLIP tags (`webli`) and Hub repositories give as preprocessing."""


def _image() -> Image.Image:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (40, 96, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())  # 96 x 40: squash and short-side resize differ


def _features(clip) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        images = clip.clip_preprocess(_image()).unsqueeze(0)
        return clip.model.encode_image(images), clip.model.encode_text(clip.tokenizer(TEXTS))


def _save(clip, path: Path) -> Path:
    save_weights(path, clip.model.state_dict(), clip_metadata(clip, "stage1", 1, {}))
    return path


def _siglip_weights(path: Path, seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = open_clip.create_model("cir-tiny-siglip").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return state


def test_a_tags_preprocessing_survives_a_checkpoint_reload(hf_standins, tmp_path, monkeypatch):
    """A SigLIP tag normalises with 0.5/0.5 and squashes; a stage-1 checkpoint of it must too,
    else evaluation and stage 2 of the fine-tuned model see other pixels than training did."""
    from open_clip.pretrained import _PRETRAINED, _slpcfg

    weights = tmp_path / "webli.safetensors"
    _siglip_weights(weights)
    monkeypatch.setitem(_PRETRAINED, "cir-tiny-siglip", {"webli_test": _slpcfg(file=str(weights))})
    clip = load_clip("cir-tiny-siglip", "webli_test")
    assert clip.mean_std == ((0.5,) * 3, (0.5,) * 3)
    again = load_clip(None, str(_save(clip, tmp_path / "clip.safetensors")))
    assert again.mean_std == clip.mean_std
    assert torch.equal(again.clip_preprocess(_image()), clip.clip_preprocess(_image()))
    for a, b in zip(_features(again), _features(clip)):
        assert torch.equal(a, b)
    # open_clip's config writer (what `clip-cir export` calls) sees the tag's preprocessing.
    from open_clip.push_to_hf_hub import save_config_for_hf

    save_config_for_hf(again.model, tmp_path / "open_clip_config.json", again.config)
    exported = json.loads((tmp_path / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert exported == SIGLIP_PREPROCESS


@pytest.fixture
def siglip_hub(hf_standins, tmp_path) -> str:
    """A SigLIP-style repository in open_clip's Hub layout: config (with its Hugging Face tokenizer,
    logit bias and preprocessing) and weights only, as `hf_hub_download` leaves it in the cache."""
    folder = tmp_path / "repo"
    folder.mkdir()
    config = open_clip.get_model_config("cir-tiny-siglip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config,
                                                              "preprocess_cfg": SIGLIP_PREPROCESS}))
    _siglip_weights(folder / "open_clip_model.safetensors")
    repo = f"clip-cir-test/siglip-{tmp_path.name}"
    install_in_hub_cache(folder, repo)
    return repo


def test_a_siglip_hub_repository_loads_as_open_clip_loads_it(siglip_hub):
    name = f"hf-hub:{siglip_hub}"
    clip = load_clip(name)
    model = open_clip.create_model(name).eval()  # plain open_clip, from the same cache
    tokenizer = open_clip.get_tokenizer(name)
    assert type(clip.model) is type(model) and clip.model.logit_bias is not None
    assert torch.equal(clip.tokenizer(TEXTS), tokenizer(TEXTS))
    assert clip.mean_std == ((0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        assert torch.equal(clip.model.encode_text(clip.tokenizer(TEXTS)), model.encode_text(tokenizer(TEXTS)))


def test_a_checkpoint_trained_from_a_siglip_hub_repository_reloads_without_it(siglip_hub, tmp_path):
    clip = load_clip(f"hf-hub:{siglip_hub}")
    path = _save(clip, tmp_path / "clip.safetensors")
    shutil.rmtree(Path(os.environ["HF_HUB_CACHE"]) / f"models--{siglip_hub.replace('/', '--')}")
    again = load_clip(None, str(path))  # the tokenizer's own repository stays in the cache
    assert type(again.model) is type(clip.model) and again.model_name == clip.model_name
    assert torch.equal(again.tokenizer(TEXTS), clip.tokenizer(TEXTS)) and again.mean_std == clip.mean_std
    assert again.signature == clip.signature
    for a, b in zip(_features(again), _features(clip)):
        assert torch.equal(a, b)


def test_an_open_clip_checkpoint_of_a_hugging_face_text_tower_loads_as_open_clip_loads_it(hf_standins, tmp_path):
    """Checkpoints written with older transformers hold the text tower's `position_ids` buffer, and
    older ones a scalar/1-d logit scale or bias: open_clip's loader adapts them, ours must too."""
    torch.manual_seed(5)
    model = open_clip.create_model("cir-tiny-xlmr", pretrained_text=False)
    state = dict(model.state_dict())
    state["text.transformer.embeddings.position_ids"] = torch.arange(514).unsqueeze(0)
    state["logit_scale"] = state["logit_scale"].reshape(1)
    path = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    reference = open_clip.create_model("cir-tiny-xlmr", pretrained=str(path), pretrained_text=False).eval()
    clip = load_clip("cir-tiny-xlmr", str(path))
    tokens = clip.tokenizer(TEXTS)
    with torch.no_grad():
        assert torch.equal(clip.model.encode_text(tokens), reference.encode_text(tokens))


def test_a_hub_hosted_tag_loads_from_the_cache_as_open_clip_loads_it(siglip_hub, monkeypatch):
    """Tags whose weights live on the Hub are fetched by `hub_file`, then built with the tag's
    preprocessing: the same model and pixels as open_clip's own download of the tag."""
    from open_clip.pretrained import _PRETRAINED, _slpcfg

    monkeypatch.setitem(_PRETRAINED, "cir-tiny-siglip", {"webli_hub": _slpcfg(hf_hub=f"{siglip_hub}/")})
    clip = load_clip("cir-tiny-siglip", "webli_hub")
    model = open_clip.create_model("cir-tiny-siglip", pretrained="webli_hub").eval()
    assert clip.source == "webli_hub" and clip.mean_std == ((0.5,) * 3, (0.5,) * 3)
    assert clip.model.visual.preprocess_cfg == model.visual.preprocess_cfg
    with torch.no_grad():
        assert torch.equal(clip.model.encode_image(clip.clip_preprocess(_image()).unsqueeze(0)),
                           model.encode_image(clip.clip_preprocess(_image()).unsqueeze(0)))


NO_RETRY_SCRIPT = """
import socket, sys, time
connects, sleeps = [], []
connect = socket.socket.connect
def counted(self, address):
    connects.append(address)
    return connect(self, address)
socket.socket.connect = counted
time.sleep = lambda seconds: sleeps.append(seconds)  # huggingface_hub sleeps before each retry
from clip_cir.apps.cli import main
try:
    main(sys.argv[1:])
finally:
    print(len(connects), len(sleeps))
"""


def test_a_tag_without_network_fails_at_once_in_one_whole_line(synth_root):
    """HF_HUB_OFFLINE unset and no network (the Hub's address refuses connections): no retries,
    and one line naming the model and tag that says what is needed."""
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed.getsockname()[1]}",
               "PYTHONPATH": str(REPO)}
        env.pop("HF_HUB_OFFLINE")
        args = ["eval", "--dataset", "cirr", "--data-root", str(synth_root), "--num-workers", "0",
                "--model", "ViT-B-16-SigLIP", "--pretrained", "webli"]
        done = subprocess.run([sys.executable, "-c", NO_RETRY_SCRIPT, *args], env=env, capture_output=True,
                              text=True, timeout=300)
    connects, sleeps = map(int, done.stdout.split())
    # One connection for the weights, plus at most huggingface_hub's own one-off request for its
    # agent registry; its retries would make 6 per file and sleep between them.
    assert done.returncode == 2 and sleeps == 0 and connects <= 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    line = done.stderr.strip()
    assert line.startswith("clip-cir: error: ViT-B-16-SigLIP 'webli' weights (hf-hub:timm/ViT-B-16-SigLIP): ")
    assert "the Hugging Face Hub could not be reached" in line
    assert line.endswith("downloading it needs internet access once (or use a local weights file instead)")


def test_a_tag_offline_and_not_cached_gets_one_whole_line(cli, synth_root):
    result = cli("eval", "--dataset", "cirr", "--data-root", synth_root, "--num-workers", "0",
                 "--model", "ViT-B-16-SigLIP", "--pretrained", "webli")
    assert result.code == 2 and result.err.count("\n") == 1 and len(result.error_lines) == 1, result.err
    line = result.error_lines[0]
    assert "ViT-B-16-SigLIP 'webli' weights" in line and "HF_HUB_OFFLINE is set" in line
    assert line.endswith("(or use a local weights file instead)")
