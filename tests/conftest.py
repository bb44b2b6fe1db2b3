"""Shared fixtures for the whole test suite.

- Every test runs with ``CLIP_CIR_CACHE`` pointing at a session temp dir (set at import, so
  subprocesses inherit it too): the user's feature cache is never read or written.
- ``synth_root``: one small synthetic dataset (both layouts) generated once per session; READ ONLY.
- ``data_copy``: a private, writable copy of (part of) it, for tests that corrupt files.
- ``make_tiny_clip`` / ``tiny_clip`` / ``tiny_checkpoint``: deterministic tiny CLIPs and a
  published-format checkpoint, for tests that need fixed weights across several commands.
- ``tiny_runs``: a real 1-epoch stage-1 run and a 2-epoch stage-2 run on it (session-wide).
- ``cli``: run ``clip-cir`` in-process and get exit code, stdout and stderr back.
- ``info_logging``: the ``clip_cir`` logger at INFO, as the commands set it, for tests that read the
  log lines (or log.txt) of a run started through the Python API.
- ``hf_standins``: tiny Hugging Face tokenizers and text models in the session's HF cache, for the
  tiny SigLIP-style and HF-text-tower configs.
- huggingface_hub (and open_clip through it) sees a session temp dir as its home and cache, no
  token, and ``HF_HUB_OFFLINE=1`` (set at import, inherited by subprocesses): no test reads the
  user's Hugging Face cache or token, or reaches the network.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before anything imports clip_cir: no test may touch ~/.cache/clip_cir.
_CACHE_ROOT = tempfile.mkdtemp(prefix="clip_cir_test_cache_")
os.environ["CLIP_CIR_CACHE"] = _CACHE_ROOT
# Before anything imports huggingface_hub (it reads these once, at import).
_HF_HOME = tempfile.mkdtemp(prefix="clip_cir_test_hf_")
os.environ.update(HF_HOME=_HF_HOME, HF_HUB_CACHE=os.path.join(_HF_HOME, "hub"), HF_HUB_OFFLINE="1")
for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE", "HF_ENDPOINT"):
    os.environ.pop(_var, None)

SYNTH_ARGS = dict(n_train=120, n_val=60, n_test=60, size=64, seed=0, n_circo=20, circo_distractors=60)
"""Arguments `synth_root` was generated with (tests may rely on the resulting counts)."""


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE_ROOT, ignore_errors=True)
    shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Data root of a synthetic dataset in the three real layouts (``cirr_dataset/``,
    ``fashionIQ_dataset/`` and ``CIRCO/``), generated once per session with ``SYNTH_ARGS``: CIRR
    train/val/test1 = 120/60/60 queries (360/180/180 images); FashionIQ 40/20/20 queries per
    category; CIRCO val/test = 20/20 queries with 1-8 ground truths each over one gallery (with
    60 unrelated distractors); 64-px images, some non-square; FashionIQ mixes .jpg and .png.
    Shared by every test: never write into it (use ``data_copy`` instead)."""
    from clip_cir.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth_root")
    generate(root, progress=False, **SYNTH_ARGS)
    return root


@pytest.fixture
def data_copy(synth_root, tmp_path):
    """Factory ``data_copy(dataset=None) -> Path``: a writable copy of ``synth_root`` under the
    test's tmp_path, to corrupt freely. ``dataset="cirr"``, ``"fashioniq"`` or ``"circo"`` copies
    only that dataset's folder (and for CIRR only its val and test1 splits, what the error tests
    use); ``None`` copies CIRR and FashionIQ whole."""
    def copy(dataset: str | None = None) -> Path:
        root = tmp_path / "data"
        if dataset == "circo":
            shutil.copytree(synth_root / "CIRCO", root / "CIRCO")
            return root
        if dataset in (None, "fashioniq"):
            shutil.copytree(synth_root / "fashionIQ_dataset", root / "fashionIQ_dataset")
        if dataset is None:
            shutil.copytree(synth_root / "cirr_dataset", root / "cirr_dataset")
        elif dataset == "cirr":
            skip = shutil.ignore_patterns("train", "*.train.json")
            shutil.copytree(synth_root / "cirr_dataset", root / "cirr_dataset", ignore=skip)
        elif dataset != "fashioniq":
            raise ValueError(dataset)
        return root
    return copy


@pytest.fixture(scope="session")
def hf_standins(synth_root) -> dict[str, Path]:
    """Tiny stand-ins of the Hugging Face repositories the tiny SigLIP-style (``cir-tiny-siglip``:
    tokenizer ``timm/ViT-B-16-SigLIP``) and HF-text-tower (``cir-tiny-hftext``, ``cir-tiny-xlmr``: a
    2-layer RoBERTa or XLM-RoBERTa and its tokenizer) configs name, in the real file formats,
    written into the session's Hugging Face cache so they load offline: ``{repo_id: snapshot
    folder}``. Tokenizers are trained on ``synth_root``'s captions (see ``tests/helpers.py``)."""
    from helpers import build_hf_standins, dataset_captions

    return build_hf_standins(Path(os.environ["HF_HUB_CACHE"]), dataset_captions(synth_root))


def _make_tiny_clip(name: str = "cir-tiny-vit", seed: int = 0):
    import open_clip
    import torch

    import clip_cir.models.clip  # noqa: F401 - registers the tiny configs with open_clip

    torch.manual_seed(seed)
    return open_clip.create_model(name).eval()


@pytest.fixture(scope="session")
def make_tiny_clip():
    """Factory ``make_tiny_clip(name="cir-tiny-vit", seed=0)``: a fresh randomly initialised
    open_clip tiny model (``cir-tiny-vit`` or ``cir-tiny-rn``), deterministic for ``seed``, in
    eval mode. Its ``state_dict()`` is an OpenAI-format CLIP state dict."""
    return _make_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip():
    """The ``cir-tiny-vit`` open_clip model with seed-0 weights (session-wide; do not modify)."""
    return _make_tiny_clip("cir-tiny-vit", 0)


@pytest.fixture(scope="module")
def frozen_clip():
    """``cir-tiny-vit`` as the library loads it (a ``LoadedCLIP``), seed-0 weights, every parameter
    frozen: the CLIP the zero-shot methods train φ against."""
    import torch

    from clip_cir.models.clip import load_clip

    torch.manual_seed(0)
    clip = load_clip("cir-tiny-vit")
    clip.model.requires_grad_(False)
    return clip


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_clip, tmp_path_factory) -> Path:
    """``tiny_clip``'s weights saved as a published fine-tuned checkpoint,
    ``{"epoch": 0, "CLIP": openai_format_state_dict}`` (loads without a model name)."""
    import torch

    path = tmp_path_factory.mktemp("tiny_ckpt") / "tiny_clip.pt"
    torch.save({"epoch": 0, "CLIP": tiny_clip.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_runs(synth_root, tmp_path_factory) -> dict[str, Path]:
    """A 1-epoch stage-1 CIRR run (``cir-tiny-vit``, text encoder) and a 2-epoch stage-2 run on its
    CLIP, trained through the Python API: ``{"stage1": RUN_DIR, "stage2": RUN_DIR}``. Shared: never
    write into them."""
    import clip_cir

    out = tmp_path_factory.mktemp("runs")
    common = dict(dataset="cirr", data_root=synth_root, output_dir=out, num_workers=0, no_progress=True)
    clip_cir.finetune(**common, model="cir-tiny-vit", epochs=1, batch_size=32, lr=1e-4, experiment_name="s1")
    clip_cir.train_combiner(**common, pretrained=out / "s1", epochs=2, batch_size=64, lr=1e-3, experiment_name="s2")
    return {"stage1": out / "s1", "stage2": out / "s2"}


@dataclass
class CLIResult:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("clip-cir: error:")]


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> CLIResult(code, out, err)``: ``clip_cir.apps.cli.main`` in-process; the exit
    code comes from its SystemExit. Arguments may be Paths; output captured so far is
    discarded first."""
    from clip_cir.apps.cli import main

    def run(*args) -> CLIResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CLIResult(code, captured.out, captured.err)
    return run


@pytest.fixture
def info_logging(caplog):
    """The ``clip_cir`` logger at INFO for this test, as the commands set it
    (``clip_cir.apps.entry.setup_logging``); the Python API leaves logging to its caller. A run
    started through the API then writes its lines into its log.txt, and ``caplog`` (returned)
    records them."""
    caplog.set_level(logging.INFO, logger="clip_cir")
    return caplog
