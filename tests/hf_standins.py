"""Tiny stand-ins for the Hugging Face repositories some open_clip backbones load, written in the
real on-disk formats and laid out as huggingface_hub's cache holds a download, so that models
naming them load offline (`HF_HUB_OFFLINE=1`) through transformers' and open_clip's own code.

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
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

SIGLIP_TOKENIZER = "timm/ViT-B-16-SigLIP"
HF_TEXT_MODEL = "hf-internal-testing/tiny-random-RobertaModel"
XLMR_TEXT_MODEL = "hf-internal-testing/tiny-random-XLMRobertaModel"
REVISION = "5a11ca5e" * 5
"""The commit hash `refs/main` points at for every stand-in."""


def install_in_hub_cache(folder: Path, repo_id: str, cache: Path, missing: Iterable[str] = ()) -> Path:
    """`folder`'s files as the cache holds a download: blobs/<sha256>, snapshots/<rev>/<file> links
    to them, refs/main; `missing` are files the Hub answered 404 for (`.no_exist/<rev>/<file>`),
    which is how transformers learns offline that a repository has no `config.json`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    for name in missing:
        (repo / ".no_exist" / REVISION).mkdir(parents=True, exist_ok=True)
        (repo / ".no_exist" / REVISION / name).touch()
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
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
            snapshots[repo_id] = install_in_hub_cache(folder, repo_id, cache, missing)
    return snapshots


def dataset_captions(root: Path) -> list[str]:
    """Every caption of a synthetic data root (CIRR and FashionIQ layouts), for training tokenizers."""
    captions = []
    for path in sorted((root / "cirr_dataset" / "cirr" / "captions").glob("*.json")):
        captions += [entry["caption"] for entry in json.loads(path.read_text())]
    for path in sorted((root / "fashionIQ_dataset" / "captions").glob("*.json")):
        captions += [c for entry in json.loads(path.read_text()) for c in entry["captions"]]
    return captions
