"""`clip-cir export`: a trained CLIP (and Combiner) as a Hugging Face Hub repository.

The folder is open_clip's own hub layout, so plain open_clip loads the CLIP with
`create_model_and_transforms("hf-hub:ORG/NAME")` and no clip-cir installed:

- `open_clip_config.json` (written by open_clip's `save_config_for_hf`): the full model config —
  QuickGELU included, and whole for configs open_clip does not ship (our tiny ones) — plus the
  preprocessing config;
- `open_clip_model.safetensors`: the weights, float32, as open_clip's state dict;
- `combiner.safetensors` + `combiner.json`: the Combiner and its dims (`--combiner hf-hub:...`);
- `README.md`: a model card (open_clip's `generate_readme` plus the runs' settings, validation
  metrics and how to load it).

Local paths (data roots, run folders) never reach the card or the metadata: the folder is meant
to be published.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME

from clip_cir.errors import CIRError
from clip_cir.evaluation.metrics import format_metrics
from clip_cir.models.clip import LoadedCLIP, load_clip, resolve_clip_checkpoint
from clip_cir.models.compositors.base import Compositor
from clip_cir.models.compositors.loading import (
    COMBINER_FILE,
    check_compositor_fits,
    compositor_metadata,
    load_compositor,
    resolve_compositor_checkpoint,
)
from clip_cir.models.files import (
    atomic_write,
    read_safetensors_metadata,
    save_weights,
    write_dir,
    write_text,
)
from clip_cir.models.hub import HUB_PREFIX, hub_repo_id, push_folder, push_token

log = logging.getLogger("clip_cir")

CARD_FILE = "README.md"
PLACEHOLDER_REPO = "ORG/NAME"
PRIVATE_SETTINGS = {"data_root", "output_dir", "run_dir", "cache_dir", "resume", "experiment_name", "program",
                    "num_workers", "no_progress", "tracker", "no_cache", "cpu"}
"""Run options that describe one machine, not the model: kept out of a published card."""
LAYOUT_SETTINGS = {"fashioniq_categories": "fashioniq", "circo_query_text": "circo", "css_query_images": "css",
                   "fashioniq_protocol": "fashioniq", "shoes_protocol": "shoes",
                   "keep_reference": "triplets", "csv_reference_key": "triplets", "csv_caption_key": "triplets",
                   "csv_target_key": "triplets", "csv_separator": "triplets"}
"""Data options only one `--dataset` reads: on the card of a run on that dataset only."""
CITATIONS = (
    "@inproceedings{baldrati2022conditioned,\n"
    "  title={Conditioned and Composed Image Retrieval Combining and Partially Fine-Tuning CLIP-Based Features},\n"
    "  author={Baldrati, Alberto and Bertini, Marco and Uricchio, Tiberio and Del Bimbo, Alberto},\n"
    "  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition Workshops},\n"
    "  year={2022}\n}",
    "@article{baldrati2023composed,\n"
    "  title={Composed Image Retrieval using Contrastive Learning and Task-oriented CLIP-based Features},\n"
    "  author={Baldrati, Alberto and Bertini, Marco and Uricchio, Tiberio and Del Bimbo, Alberto},\n"
    "  journal={ACM Transactions on Multimedia Computing, Communications and Applications},\n"
    "  year={2023}\n}",
)
STAGES = {"pretrain": "Pretraining (image-caption)", "stage1": "Stage 1 (CLIP fine-tuning)",
          "stage2": "Stage 2 (Combiner)"}


@dataclass
class Provenance:
    """Where an exported part came from, as far as its files tell."""

    source: str
    checkpoint: Path | None = None
    """The local checkpoint file a path source resolved to (None for tags and hub names)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Our checkpoint metadata (stage, epoch, validation metrics); {} for other formats."""
    runs: list[dict[str, Any]] = field(default_factory=list)
    """`config.json` of the run that wrote the checkpoint, then of the runs it started from."""


def _run_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and "program" in config else None


def _local_path(source: str) -> Path | None:
    path = Path(source)
    return path if hub_repo_id(source) is None and path.exists() else None


def _lineage(source: str, checkpoint: Path) -> list[dict[str, Any]]:
    """The run that wrote `checkpoint` (a run directory, or `RUN/best/x.safetensors`), then the
    runs its `--pretrained` was, oldest last."""
    runs: list[dict[str, Any]] = []
    candidates = [Path(source), checkpoint.parent, checkpoint.parent.parent]
    while candidates and len(runs) < 4:
        config = next((c for c in map(_run_config, candidates) if c is not None), None)
        if config is None:
            break
        runs.append(config)
        parent = _local_path(str(config.get("pretrained") or ""))
        candidates = [parent] if parent is not None and parent.is_dir() else []
    return runs


def provenance(source: str, resolve: Callable[[Path], Path]) -> Provenance:
    """What the files of a local source say about it; tags and hub names say nothing more."""
    path = _local_path(source)
    if path is None:
        return Provenance(source=source)
    checkpoint = resolve(path)
    metadata = read_safetensors_metadata(checkpoint) if checkpoint.suffix == ".safetensors" else {}
    return Provenance(source=source, checkpoint=checkpoint, metadata=metadata, runs=_lineage(source, checkpoint))


def _public(value: Any) -> Any:
    """A setting as it may be published: local paths become their last component."""
    if isinstance(value, str) and ("/" in value or "\\" in value) and hub_repo_id(value) is None \
            and Path(value).is_absolute():
        return f"{Path(value).name} (local)"
    return value


def data_name(config: Mapping[str, Any]) -> str | None:
    """What a `--dataset triplets` run trained on, for a reader of the card: the data folder's own
    name (the rest of its path is this machine's). None for the benchmarks, which their name says."""
    if config.get("dataset") != "triplets" or not config.get("data_root"):
        return None
    name = os.path.basename(os.path.normpath(str(config["data_root"])))
    return name if name not in ("", ".", "..") else None


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    dataset = config.get("dataset")
    private = PRIVATE_SETTINGS | {k for k, owner in LAYOUT_SETTINGS.items() if dataset and dataset != owner}
    data = data_name(config)
    settings: dict[str, Any] = {}
    for k, v in config.items():
        if k not in private and v is not None:
            settings[k] = _public(v)
        if k == "dataset" and data:  # the data's name right after its kind
            settings["data"] = data
    return settings


def _base_model(clip: LoadedCLIP, clip_from: Provenance) -> str:
    if clip_from.runs:
        first = clip_from.runs[-1]
        model = first.get("model") or clip_from.metadata.get("model_name") or clip.model_name
        pretrained = first.get("pretrained")
        if hub_repo_id(pretrained):
            return str(pretrained)
        return f"{model} ({_public(pretrained) if pretrained else 'random init'})"
    if clip_from.checkpoint is not None:
        return f"{clip.model_name}, weights from {clip_from.checkpoint.name}"
    return f"{clip.model_name} ({clip_from.source})"


def _metrics_block(title: str, origin: Provenance) -> str:
    metrics = origin.metadata.get("metrics") or {}
    if not metrics:
        return ""
    dataset = origin.runs[0].get("dataset", "") if origin.runs else ""
    data = f"{dataset} `{data_name(origin.runs[0])}`" if origin.runs and data_name(origin.runs[0]) else dataset
    epoch = f", epoch {origin.metadata['epoch']}" if "epoch" in origin.metadata else ""
    return f"\n### {title} ({data} val{epoch})\n\n```\n{format_metrics(metrics, dataset)}\n```\n"


def model_card(clip: LoadedCLIP, clip_from: Provenance, combiner: Compositor | None, combiner_from: Provenance | None,
               title: str, repo_id: str | None, license_name: str, mapping: Any = None) -> str:
    """README.md: open_clip's model card format, with what the runs recorded."""
    from open_clip.push_to_hf_hub import generate_readme

    repo = repo_id or PLACEHOLDER_REPO
    name = f"{HUB_PREFIX}{repo}"
    # The CLIP's own history, then the run that trained the Combiner (on that CLIP).
    runs = [*reversed(clip_from.runs), *(combiner_from.runs[:1] if combiner_from else [])]
    seen: set[str] = set()
    details: dict[str, Any] = {"Base model": _base_model(clip, clip_from),
                               "Architecture": f"{clip.model_name}: open_clip config in open_clip_config.json "
                                               f"(embedding dim {clip.embed_dim}, input {clip.input_size} px, "
                                               f"QuickGELU {'yes' if clip.config.get('quick_gelu') else 'no'})"}
    stages = [STAGES.get(run.get("program"), str(run.get("program"))) for run in runs]
    for stage, run in zip(stages, runs):
        if stages.count(stage) > 1:  # stage 1 on a large triplet set, then on the benchmark: both shown
            data = " ".join(filter(None, [run.get("dataset"), f"`{data_name(run)}`" if data_name(run) else None]))
            stage = f"{stage} on {data}" if data else stage
        while stage in seen:
            stage += ", again"
        seen.add(stage)
        details[stage] = _settings(run)
    if combiner is not None:
        details["Combiner" if combiner.name == "combiner" else f"Compositor ({combiner.name})"] = combiner.dims
    dataset = next((r.get("dataset") for r in reversed(runs) if r.get("dataset")), None)
    transform = next((r.get("transform") for r in reversed(runs) if r.get("transform")), None)
    description = ("A CLIP for composed image retrieval (reference image + relative caption -> target image), "
                   "trained with clip-cir following CLIP4Cir (Baldrati et al.): stage 1 fine-tunes CLIP on the "
                   "normalised sum of image and caption features, stage 2 trains a Combiner network on the "
                   "frozen features.\n")
    stage = clip_from.metadata.get("stage")
    metrics = _metrics_block("Stage 1 CLIP, element-wise sum" if stage == "stage1" else f"CLIP ({stage})", clip_from)
    if combiner_from is not None:
        metrics += _metrics_block("CLIP + Combiner", combiner_from)
    description += "\n## Validation metrics\n"
    description += ("\nRecalls in %, measured by the training runs on their validation split (the method's "
                    "protocol: R@K over the whole gallery with the reference removed, Rs@K within the query's "
                    "image set).\n" + metrics if metrics else "\nNo validation metrics were recorded with these "
                                                               "checkpoints.\n")
    pad = f"The runs preprocessed images with `{transform}`" + (
        "; open_clip's own transform (resize + centre crop) gives slightly different features, so use clip-cir "
        "(`--transform targetpad`) to reproduce the metrics above." if transform and transform != "clip" else ".")
    network = "The Combiner" if combiner is None or combiner.name == "combiner" else f"The {combiner.name} compositor"
    combiner_usage = (f"\n{network} (stage 2) loads with clip-cir: `load_compositor(\"{name}\")` from "
                      f"`clip_cir.models.compositors.loading`, or `clip_cir.load(\"{name}\")` with its CLIP.\n"
                      if combiner is not None else "")
    if mapping is not None:
        details[f"Zero-shot mapping network ({mapping.method})"] = {
            **mapping.dims, "prompt": mapping.saved_metadata["prompt_template"]}
        combiner_usage = (f"\nThe {mapping.method} mapping network (phi.safetensors, trained by `clip-cir "
                          f"zero-shot`) loads with clip-cir: `clip_cir.load(\"{name}\")` composes queries as "
                          f"pseudo-word prompts.\n")
    combiner_flag = f" --combiner {name}" if combiner is not None else f" --zero-shot {name}" if mapping else ""
    usage = f"""
With plain [open_clip](https://github.com/mlfoundations/open_clip) (no clip-cir needed):

```python
import open_clip
import torch

model, _, preprocess = open_clip.create_model_and_transforms("{name}")
tokenizer = open_clip.get_tokenizer("{name}")
with torch.no_grad():
    image = model.encode_image(preprocess(reference_image).unsqueeze(0))
    text = model.encode_text(tokenizer(["is red with long sleeves"]))
    query = torch.nn.functional.normalize(image + text, dim=-1)  # stage 1's combining function
```
{"" if transform is None else pad}
{combiner_usage}
With clip-cir (evaluation, CIRR submissions, web demo, further training):

```bash
clip-cir eval --dataset {dataset or "cirr"} --data-root DATA --pretrained {name}{combiner_flag}
clip-cir demo --dataset {dataset or "cirr"} --data-root DATA --pretrained {name}{combiner_flag}
```

Downloaded files live in the Hugging Face cache; with `HF_HUB_OFFLINE=1` they load without network."""
    card = {"tags": ("clip", "open_clip", "clip-cir", "composed-image-retrieval"), "license": license_name,
            "description": description, "details": details, "usage": usage, "citation": list(CITATIONS)}
    return generate_readme(card, title)


def _combiner_metadata(combiner: Compositor, origin: Provenance) -> dict[str, Any]:
    """The exported stage-2 network's JSON: which compositor, its sizes, and the published facts
    of its checkpoint."""
    keep = ("stage", "epoch", "metrics", "clip_model_name", "clip_architecture")
    return {**compositor_metadata(combiner, getattr(combiner, "token_grid", None)),
            **{k: origin.metadata[k] for k in keep if k in origin.metadata}}


def write_export(folder: Path, clip: LoadedCLIP, combiner: Compositor | None, card: str,
                 combiner_metadata: Mapping[str, Any], mapping: Any = None) -> None:
    """Fill `folder` with open_clip's hub layout (its own config writer and file names)."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in clip.model.state_dict().items()}
    atomic_write(folder / HF_SAFE_WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    save_config_for_hf(clip.model, folder / HF_CONFIG_NAME, model_config=clip.config)
    if combiner is not None:
        save_weights(folder / COMBINER_FILE, combiner.state_dict(), dict(combiner_metadata))
    if mapping is not None:  # φ with its metadata (method, prompt, the CLIP it was trained on)
        from clip_cir.models.zero_shot import MAPPING_FILE, save_mapping

        save_mapping(folder / MAPPING_FILE, mapping, mapping.saved_metadata)
    write_text(folder / CARD_FILE, card)


def export_model(pretrained: str, output_dir: Path, combiner_source: str | None = None, model_name: str | None = None,
                 push_to_hub: str | None = None, private: bool = False, license_name: str = "other",
                 overwrite: bool = False, zero_shot_source: str | None = None) -> Path:
    """Load the sources exactly as every command does, write the folder atomically, push if asked."""
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise CIRError(f"--output-dir {output_dir} is a file")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise CIRError(f"--output-dir {output_dir} exists and is not empty (pass --overwrite to replace it)")
        if not (output_dir / HF_CONFIG_NAME).is_file():
            # --overwrite deletes the old folder: only ever one that an export wrote.
            raise CIRError(f"--output-dir {output_dir} is not an exported model (no {HF_CONFIG_NAME}); "
                           f"refusing to replace it")
    if push_to_hub is not None and "/" not in push_to_hub.removeprefix(HUB_PREFIX):
        raise CIRError(f"--push-to-hub needs ORG/NAME (your user name or an organisation), got '{push_to_hub}'")
    repo_id = push_to_hub.removeprefix(HUB_PREFIX) if push_to_hub else None
    token = push_token(repo_id) if repo_id else None  # before any work: a push that cannot happen stops here

    clip = load_clip(model_name, pretrained)
    clip_from = provenance(pretrained, resolve_clip_checkpoint)
    combiner, combiner_from = None, None
    if combiner_source:
        combiner = load_compositor(combiner_source)
        combiner_from = provenance(combiner_source, resolve_compositor_checkpoint)
        check_compositor_fits(combiner, clip)
    if combiner_source and zero_shot_source:
        raise CIRError("give --combiner or --zero-shot, not both")
    mapping = None
    if zero_shot_source:
        from clip_cir.models.zero_shot import clip_identity, mapping_metadata, zero_shot_composer

        mapping = zero_shot_composer(clip, zero_shot_source).mapping  # checked against the CLIP
        # A published φ records no CLIP: the exported one is bound to the CLIP exported with it.
        mapping.saved_metadata = mapping_metadata(mapping, mapping.trained_on or clip_identity(clip),
                                                  mapping.prompt_template, mapping.placeholder)
    title = repo_id.split("/")[-1] if repo_id else output_dir.resolve().name
    card = model_card(clip, clip_from, combiner, combiner_from, title, repo_id, license_name, mapping)
    combiner_metadata = _combiner_metadata(combiner, combiner_from) if combiner is not None else {}
    write_dir(output_dir, lambda tmp: write_export(tmp, clip, combiner, card, combiner_metadata, mapping))
    log.info("exported %s%s to %s", clip.describe(), f" + Combiner {combiner_source}" if combiner else "", output_dir)
    if repo_id is not None and token is not None:
        url = push_folder(output_dir, repo_id, token, private=private)
        log.info("pushed to %s", url)
    return output_dir
