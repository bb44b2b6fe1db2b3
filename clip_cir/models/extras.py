"""Optional packages some open_clip backbones need, and the one line that says which to install.

SigLIP and other models tokenize with Hugging Face tokenizers, and the multilingual CLIPs
(roberta-ViT-B-32, xlm-roberta-*) have a Hugging Face text tower: both need transformers (with
tokenizers and sentencepiece), installed by clip-cir's `hf` extra. open_clip imports them only when
such a model is built and then fails with a traceback or with a message that names neither the
model nor the extra; timm image towers (SigLIP, ConvNeXt, EVA) fail the same way without timm.
`backbone_requirements` turns those failures, and a Hugging Face tokenizer or text model that is
neither cached nor downloadable, into one `CIRError` line.
"""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from typing import Iterator

from clip_cir.errors import CIRError

EXTRAS = {"transformers": "hf", "tokenizers": "hf", "sentencepiece": "hf"}
"""Top-level package -> the clip-cir extra that installs it (setup.cfg's extras_require)."""

OPEN_CLIP_HINTS = ("transformers", "timm")
"""Packages open_clip reports missing with a RuntimeError saying `pip install PACKAGE`, not an ImportError."""


def hf_repo(config: dict | None, part: str) -> str | None:
    """The Hugging Face repository a model config loads for its `tokenizer` or its text tower (`model`)."""
    text = (config or {}).get("text_cfg") or {}
    return text.get("hf_tokenizer_name") if part == "tokenizer" else text.get("hf_model_name")


def _needed_for(config: dict | None, part: str, package: str) -> str:
    if package == "timm":
        timm_name = ((config or {}).get("vision_cfg") or {}).get("timm_model_name")
        return f"timm for its image tower{f' ({timm_name})' if timm_name else ''}"
    repo = hf_repo(config, part)
    if part == "tokenizer" and (repo or package in EXTRAS):
        return f"the Hugging Face tokenizer{f' {repo}' if repo else ''}"
    if repo or package in EXTRAS:
        return f"a Hugging Face text tower{f' ({repo})' if repo else ''}"
    return f"the Python package {package}"


def missing_package_message(name: str, config: dict | None, part: str, package: str) -> str:
    """`NAME needs WHAT: pip install ...` for a package that is not installed."""
    extra = EXTRAS.get(package)
    install = f"pip install 'clip-cir[{extra}]'" if extra else f"pip install {package}"
    return f"{name} needs {_needed_for(config, part, package)}: {install} ({package} is not installed)"


def first_line(error: BaseException, limit: int = 300) -> str:
    """An error's first line, whitespace collapsed, shortened at a word (with "...") past `limit`
    characters: a reason to quote inside one `CIRError` line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    line = " ".join(lines[0].split()) if lines else type(error).__name__
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + "..."


@contextmanager
def backbone_requirements(name: str, config: dict | None, part: str) -> Iterator[None]:
    """Around open_clip's creation of model `name` (`part="model"`) or of its tokenizer
    (`part="tokenizer"`): a missing optional package, or a Hugging Face repository the config names
    that cannot be loaded, becomes one `CIRError` line. Other errors pass through unchanged."""
    try:
        yield
    except ImportError as e:
        package = (e.name or "").split(".")[0]
        if not package:
            raise CIRError(f"{name}: {first_line(e)}") from None
        if importlib.util.find_spec(package) is not None:  # installed, but without what open_clip imports
            extra = EXTRAS.get(package)
            install = f"pip install -U 'clip-cir[{extra}]'" if extra else f"pip install -U {package}"
            raise CIRError(f"{name} needs a newer {package}: {install} ({first_line(e)})") from None
        raise CIRError(missing_package_message(name, config, part, package)) from None
    except RuntimeError as e:
        text = str(e)
        for package in OPEN_CLIP_HINTS:
            if f"pip install {package}" in text:
                raise CIRError(missing_package_message(name, config, part, package)) from None
        raise
    except OSError as e:
        # transformers says "couldn't connect ... couldn't find them in the cached files", "is not a
        # valid model identifier" or "does not appear to have a file named ...", with a traceback.
        repo = hf_repo(config, part)
        text = str(e)
        if repo is None or not (repo in text or "huggingface.co" in text):
            raise
        what = "tokenizer" if part == "tokenizer" else "text model"
        offline = " (offline: only the Hugging Face cache is read)" if _offline() else ""
        raise CIRError(f"{name}: could not load the Hugging Face {what} {repo}{offline}: {first_line(e)}") from None


def _offline() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)
