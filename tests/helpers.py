"""What more than one test file uses, in one place: test files import these from here and never
from one another (tests/layout/test_layout.py checks it); fixtures are in conftest.py.

- `REPO`: the repository's root folder.
- Training runs: `stage1_options` / `stage2_options` / `pretrain_options` (keyword options of a
  small run on the tiny CLIP, for `clip_cir.finetune` / `train_combiner` / `pretrain`), the same as
  command lines (`command_line`, `stage1_args`, `stage2_args`), several processes of DDP
  (`ddp_launcher`, `launch_stage1`), and comparing runs' weights (`read_weights`,
  `initial_weights`, `update_gaps`).
- A stand-in training stage for the loop (`ScriptedStage`).
- Images in every PIL mode and the published preprocessing written out again (`mode_image`,
  `published_transform`).
- `clip-cir report` of a run (`run_report`, `check_png`).
- The web demo: requests to its JSON API (`demo_search`, `demo_upload`, `png_bytes`) and
  `python demo/app.py` in a subprocess (`start_demo_script`, `stop_demo_script`); its fixtures are
  in tests/apps/demo/conftest.py.
- The Hugging Face cache: `install_in_hub_cache`, and tiny stand-ins for the Hugging Face
  repositories some open_clip backbones load, written in the real on-disk formats and laid out as
  huggingface_hub's cache holds a download, so that models naming them load offline
  (`HF_HUB_OFFLINE=1`) through transformers' and open_clip's own code (`build_hf_standins`):

  - `timm/ViT-B-16-SigLIP` (the tokenizer every SigLIP config names): a T5-style Unigram
    `tokenizer.json` (Metaspace, `</s>` appended, `</s>` as padding as SigLIP pads) with its
    `tokenizer_config.json` and `special_tokens_map.json`, trained on the given captions.
  - `hf-internal-testing/tiny-random-RobertaModel` (the text tower of `cir-tiny-hftext`): a
    2-layer RoBERTa `config.json` + `model.safetensors` and a byte-level BPE tokenizer
    (`tokenizer.json`, `vocab.json`, `merges.txt`, configs), RoBERTa's special tokens and ids.
  - `hf-internal-testing/tiny-random-XLMRobertaModel` (the text tower of `cir-tiny-xlmr`, as
    `xlm-roberta-base` is that of `xlm-roberta-base-ViT-B-32`): a 2-layer XLM-RoBERTa `config.json` +
    `model.safetensors` and a SentencePiece-style Unigram `tokenizer.json` as XLM-R's (NFKC,
    Metaspace, `<s> $A </s>`), with XLM-R's ids: `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3, `<mask>` last.

  Contents are ours (vocabularies trained on the synthetic captions, seeded random weights); the
  file names, formats and cache layout are those of the real repositories.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clip_cir.training.loop import Stage

REPO = Path(__file__).resolve().parents[1]
"""The repository's root folder (this file is tests/helpers.py)."""


# ---- training runs ----------------------------------------------------------------------------------------

def stage1_options(data: Path, runs: Path, name: str, **extra: Any) -> dict[str, Any]:
    """Keyword options of a small stage-1 run (`clip_cir.finetune(**options)`): CIRR under `data`,
    the tiny ViT CLIP, batch 16, written to `runs / name`; `extra` adds or overrides options."""
    return {"dataset": "cirr", "data_root": data, "model": "cir-tiny-vit", "batch_size": 16, "lr": 1e-4,
            "output_dir": runs, "experiment_name": name, "num_workers": 0, "no_progress": True, **extra}


def stage2_options(data: Path, runs: Path, name: str, **extra: Any) -> dict[str, Any]:
    """Keyword options of a small stage-2 run (`clip_cir.train_combiner(**options)`) on the tiny ViT
    CLIP's features, batch 32, written to `runs / name`."""
    return {"dataset": "cirr", "data_root": data, "model": "cir-tiny-vit", "batch_size": 32, "lr": 1e-3,
            "output_dir": runs, "experiment_name": name, "no_progress": True, **extra}


def pretrain_options(train_data: Path, runs: Path, name: str, **extra: Any) -> dict[str, Any]:
    """Keyword options of a one-epoch pretraining run (`clip_cir.pretrain(**options)`) of the tiny
    ViT CLIP on a caption CSV, batch 32, written to `runs / name`."""
    return {"train_data": train_data, "model": "cir-tiny-vit", "epochs": 1, "batch_size": 32, "output_dir": runs,
            "experiment_name": name, "num_workers": 0, "no_progress": True, **extra}


def command_line(options: dict[str, Any]) -> list[str]:
    """The command line that gives a program these options: `--name value` for each (a list or tuple
    as several values), a switch alone when True, nothing for False and None."""
    argv: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, *map(str, value)] if isinstance(value, (list, tuple)) else [flag, str(value)]
    return argv


def stage1_args(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    """`stage1_options` as a command line, then the `extra` arguments."""
    return [*command_line(stage1_options(data, runs, name)), *extra]


def stage2_args(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    """`stage2_options` as a command line, then the `extra` arguments."""
    return [*command_line(stage2_options(data, runs, name)), *extra]


def ddp_launcher(processes: int) -> list[str]:
    """How to start N CPU processes of DDP. `accelerate launch --cpu --num_processes N` starts ONE
    process on a machine without GPUs (it needs mpirun for more); torchrun starts N, and the
    programs' --cpu makes Accelerate join them over gloo."""
    if processes == 1:
        return []
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]


def launch_stage1(args: list[str], processes: int) -> subprocess.CompletedProcess:
    """`stage1/finetune.py ARGS` in `processes` processes of DDP (one: a plain `python`); it must
    succeed and say it ran in that many."""
    cmd = [sys.executable, *ddp_launcher(processes), str(REPO / "stage1" / "finetune.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"processes: {processes} |" in result.stderr, "the run did not have the processes it was launched with"
    return result


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def initial_weights(model: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The random initial weights a run of `model` with `--seed seed` starts from."""
    from clip_cir.models.clip import load_clip
    from clip_cir.training.run import seed_everything

    seed_everything(seed)
    return load_clip(model).model.state_dict()


def update_gaps(a: dict, b: dict, start: dict) -> tuple[float, float]:
    """How far two runs' updates from `start` differ: (largest per tensor, overall) of |a - b| / |a - start|.

    Runs that reduce in another order (processes, micro-batches) differ by float noise, and Adam
    turns noise in near-zero gradients into steps of up to lr: compare updates, not weights. Attention
    key biases are left out: softmax ignores a shift shared by all logits, so their gradient is zero
    in exact arithmetic and their "updates" are pure noise. A run that lost the other rank's
    negatives, or half the gradient, is far off.
    """
    def trained(key: str, t: torch.Tensor) -> torch.Tensor:
        if key.endswith("in_proj_bias"):  # [q; k; v]: drop k
            n = t.shape[0] // 3
            return torch.cat([t[:n], t[2 * n:]])
        return t

    moved = [k for k in a if not torch.equal(a[k], start[k]) and not k.endswith("k_proj.bias")]
    assert moved
    diff = {k: (trained(k, a[k]) - trained(k, b[k])).norm() for k in moved}
    step = {k: (trained(k, a[k]) - trained(k, start[k])).norm() for k in moved}
    overall = (sum(d ** 2 for d in diff.values()) / sum(s ** 2 for s in step.values())).sqrt().item()
    return max((diff[k] / step[k]).item() for k in moved), overall


# ---- a training stage for the loop ------------------------------------------------------------------------

class Batches:
    def __init__(self, steps: int = 2):
        self.epoch, self.steps = 0, steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.epoch)
        for _ in range(self.steps):
            yield {"x": torch.randn(4, 3, generator=generator), "y": torch.randn(4, 2, generator=generator)}


class ScriptedStage(Stage):
    """A linear model whose validation returns scripted scores, one per validation, and records the
    weights it had at each validation."""

    def __init__(self, scores: list[float]):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        super().__init__(model, torch.optim.SGD(model.parameters(), lr=0.1), Batches())
        self.scores, self.validated, self.weights_at = list(scores), [], {}

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(batch["x"]), batch["y"]

    def loss(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(*features)

    def train_mode(self) -> None:
        self.model.train()

    def validate(self, epoch: int) -> dict[str, float]:
        self.validated.append(epoch + 1)
        self.weights_at[epoch + 1] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return {"score": self.scores.pop(0)}

    def saved_modules(self, epoch: int, metrics: dict) -> dict:
        return {"model": (self.model, {"epoch": epoch})}


# ---- images in every mode, and the published preprocessing ------------------------------------------------

PALETTE_0 = (200, 30, 30)  # a palette image pads with index 0: this red, not black


def mode_image(mode: str, w: int, h: int) -> Image.Image:
    """A w x h image in `mode` with fixed pseudo-random content (alpha 0, 255 and in between)."""
    rng = np.random.default_rng(w * 100 + h)
    if mode == "P":
        image = Image.new("P", (w, h))
        image.putpalette(list(PALETTE_0) + rng.integers(0, 256, 255 * 3).tolist())
        image.frombytes(rng.integers(1, 256, w * h, dtype=np.uint8).tobytes())
        return image
    if mode == "1":
        return Image.frombytes("L", (w, h), rng.integers(0, 256, w * h, dtype=np.uint8).tobytes()).convert(
            "1", dither=Image.Dither.NONE)
    if mode == "I;16":  # a 16-bit grayscale PNG: values above 255 become white in RGB
        image = Image.new("I;16", (w, h))
        image.frombytes(rng.integers(0, 600, w * h, dtype=np.uint16).astype("<u2").tobytes())
        return image
    bands = len(mode)  # L, LA, RGB, RGBA, CMYK: one byte per band
    return Image.frombytes(mode, (w, h), rng.integers(0, 256, w * h * bands, dtype=np.uint8).tobytes())


def published_transform(name: str, size: int, ratio: float = 1.25):
    """The published CLIP4Cir transform, written out again: pad (fill 0, in the image's mode) ->
    Resize(bicubic) -> CenterCrop -> convert('RGB') -> ToTensor -> Normalize."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as TF

    from clip_cir.models.transforms import OPENAI_MEAN, OPENAI_STD

    def pad(image):
        w, h = image.size
        if name == "targetpad" and max(w, h) / min(w, h) < ratio:
            return image
        side = max(w, h) / ratio if name == "targetpad" else max(w, h)
        hp, vp = max(int((side - w) / 2), 0), max(int((side - h) / 2), 0)
        return TF.pad(image, [hp, vp, hp, vp], 0, "constant")

    return T.Compose([pad, T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      lambda image: image.convert("RGB"), T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])


# ---- clip-cir report ---------------------------------------------------------------------------------------

def check_png(path: Path, min_size: tuple[int, int] = (400, 300)) -> Image.Image:
    """A readable PNG, not tiny, and not blank: real contrast and many distinct colours."""
    image = Image.open(path)
    assert image.format == "PNG", path
    image.load()
    assert image.width >= min_size[0] and image.height >= min_size[1], (path, image.size)
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 20, (path, pixels.std())
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= 20, path
    return image


def run_report(cli, run: Path, queries: int, out: Path, seed: int) -> tuple[Image.Image, list[str]]:
    """`clip-cir report RUN`: its three figures are written and listed, and readable; returns the
    retrieval grid and the query ids it shows."""
    from clip_cir.apps.report import examples

    result = cli("report", run, "--queries", queries, "--output-dir", out, "--seed", seed)
    assert result.code == 0, result.err
    names = ["training_loss.png", "validation.png", "retrieval_examples.png"]
    assert result.out.split() == [str(out / n) for n in names]
    for name in names[:2]:
        check_png(out / name)
    grid = check_png(out / "retrieval_examples.png", min_size=(1000, 400))
    shown = json.loads(grid.text[examples.QUERIES_METADATA_KEY])
    assert len(shown) == queries
    return grid, shown


# ---- the web demo ----------------------------------------------------------------------------------------

DEMO_UPLOAD_LIMIT = 64 * 1024
"""The upload limit of the demo app the demo tests build (tests/apps/demo/conftest.py)."""


def png_bytes(size=(40, 30), colour=(200, 30, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def demo_search(client, **body):
    """`POST /api/search` with a JSON body, through a Flask test client."""
    return client.post("/api/search", json=body)


def demo_upload(client, data: bytes, caption="is blue", k="5", filename="query.png", **extra):
    """`POST /api/search` with an uploaded image (multipart), through a Flask test client; caption
    None sends none (an attribute search)."""
    form = {"image": (io.BytesIO(data), filename), "k": k, **extra}
    if caption is not None:
        form["caption"] = caption
    return client.post("/api/search", data=form, content_type="multipart/form-data")


def start_demo_script(synth_root: Path | None, cwd: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python demo/app.py` as a user runs it after the quickstart: from its own working directory,
    with a RELATIVE --data-root (Flask resolves relative file paths against its package folder).
    `synth_root` None: no --data-root, the gallery comes from `args` (`--gallery-dir`)."""
    env = {**os.environ, "CLIP_CIR_CACHE": str(cwd / "cache"), "PYTHONUNBUFFERED": "1"}
    data = ["--data-root", os.path.relpath(synth_root, cwd)] if synth_root is not None else []
    process = subprocess.Popen(
        [sys.executable, str(REPO / "demo" / "app.py"), *data,
         "--model", "cir-tiny-vit", "--num-workers", "0", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    line = ""
    deadline = time.monotonic() + 120
    while "demo on http://" not in line and time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
    if "demo on http://127.0.0.1:" not in line:
        process.terminate()
        raise AssertionError(process.stderr.read() if process.poll() is not None else line)
    return process, line.split("demo on ")[1].split()[0].rstrip("/")


def stop_demo_script(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


# ---- tiny stand-ins of Hugging Face repositories ------------------------------------------------

SIGLIP_TOKENIZER = "timm/ViT-B-16-SigLIP"
HF_TEXT_MODEL = "hf-internal-testing/tiny-random-RobertaModel"
XLMR_TEXT_MODEL = "hf-internal-testing/tiny-random-XLMRobertaModel"
REVISION = "5a11ca5e" * 5
"""The commit hash `refs/main` points at for every stand-in."""


def install_in_hub_cache(folder: Path, repo_id: str, revision: str = REVISION, missing: Iterable[str] = (),
                         cache: Path | None = None) -> Path:
    """`folder`'s files as huggingface_hub's cache holds a downloaded repository: blobs/<sha256>,
    snapshots/<revision>/<file> links to them, refs/main -> `revision` (installing a repository
    again under a new revision moves refs/main to it). `missing` are files the Hub answered 404 for
    (`.no_exist/<rev>/<file>`), which is how transformers learns offline that a repository has no
    `config.json`. `cache`: the session's Hugging Face cache (HF_HUB_CACHE, see conftest.py) unless
    given. Returns the snapshot folder."""
    cache = Path(os.environ["HF_HUB_CACHE"]) if cache is None else cache
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    for name in missing:
        (repo / ".no_exist" / revision).mkdir(parents=True, exist_ok=True)
        (repo / ".no_exist" / revision / name).touch()
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def siglip_tokenizer_files(folder: Path, captions: list[str]) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tokenizer.train_from_iterator(captions, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "tokenizer_config.json", {**special, "tokenizer_class": "T5Tokenizer", "extra_ids": 0,
                                                   "additional_special_tokens": [], "model_max_length": 64,
                                                   "clean_up_tokenization_spaces": True})


def roberta_files(folder: Path, captions: list[str]) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaConfig, RobertaModel

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(captions, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer.model.save(str(folder))  # vocab.json, merges.txt (the slow tokenizer's files)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
               "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "tokenizer_config.json", {**special, "tokenizer_class": "RobertaTokenizer",
                                                   "add_prefix_space": False, "model_max_length": 512})
    config = RobertaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=37, max_position_embeddings=512,
                           type_vocab_size=16, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    RobertaModel(config, add_pooling_layer=False).save_pretrained(str(folder))


def xlm_roberta_files(folder: Path, captions: list[str]) -> None:
    import torch
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tokenizer.train_from_iterator(captions, trainer)
    tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])  # the last id, as in XLM-R
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
               "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    _write_json(folder / "special_tokens_map.json", special)
    _write_json(folder / "tokenizer_config.json", {**special, "tokenizer_class": "XLMRobertaTokenizer",
                                                   "model_max_length": 512})
    config = XLMRobertaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=37, max_position_embeddings=514,
                              type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(str(folder))


def build_hf_standins(cache: Path, captions: list[str]) -> dict[str, Path]:
    """Install every stand-in into the Hugging Face cache folder `cache`: repo id -> snapshot folder."""
    snapshots = {}
    with tempfile.TemporaryDirectory() as staging:
        for repo_id, write, missing in ((SIGLIP_TOKENIZER, siglip_tokenizer_files, ["config.json"]),
                                        (HF_TEXT_MODEL, roberta_files, []),
                                        (XLMR_TEXT_MODEL, xlm_roberta_files, [])):
            folder = Path(staging) / repo_id.replace("/", "--")
            folder.mkdir()
            write(folder, captions)
            snapshots[repo_id] = install_in_hub_cache(folder, repo_id, missing=missing, cache=cache)
    return snapshots


def dataset_captions(root: Path) -> list[str]:
    """Every caption of a synthetic data root (CIRR and FashionIQ layouts), for training tokenizers."""
    captions = []
    for path in sorted((root / "cirr_dataset" / "cirr" / "captions").glob("*.json")):
        captions += [entry["caption"] for entry in json.loads(path.read_text())]
    for path in sorted((root / "fashionIQ_dataset" / "captions").glob("*.json")):
        captions += [c for entry in json.loads(path.read_text()) for c in entry["captions"]]
    return captions
