"""The Hugging Face Hub as a place models come from and go to.

`hf-hub:ORG/NAME` sources resolve here, through huggingface_hub's own cache, so a repository
downloaded once loads again offline (`HF_HUB_OFFLINE=1`) and is shared with plain open_clip,
which reads the same cache under the same names. Every failure — not in the cache while offline,
no such repository, no token for a push — becomes one `CIRError` line saying what to do.

This module sits below the model loaders: it knows files and repositories, not models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from clip_cir.errors import CIRError

HUB_PREFIX = "hf-hub:"
"""open_clip's schema for Hub repositories (`open_clip.create_model("hf-hub:ORG/NAME")`)."""


def hub_repo_id(source: str | None) -> str | None:
    """`ORG/NAME` for an `hf-hub:ORG/NAME` source, None for anything else (tags, paths)."""
    if source is None or not str(source).startswith(HUB_PREFIX):
        return None
    repo_id = str(source)[len(HUB_PREFIX):].strip("/")
    if not repo_id:
        raise CIRError(f"'{source}': no repository after '{HUB_PREFIX}' (expected {HUB_PREFIX}ORG/NAME)")
    return repo_id


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise CIRError("hf-hub: sources need huggingface_hub: pip install huggingface_hub") from None
    return huggingface_hub


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _reachable(hf, repo_id: str, name: str) -> bool:
    """Whether the Hub answers at all: one request, no retries. Asked before downloading a file
    the cache lacks, because huggingface_hub retries an unreachable Hub with backoff (about 25 s
    and a warning per try, for each file) before saying what one failed request already shows."""
    from huggingface_hub.utils import HfHubHTTPError, HFValidationError

    try:
        hf.get_hf_file_metadata(hf.hf_hub_url(repo_id, name))
    except (HfHubHTTPError, HFValidationError):
        return True  # the Hub answered (no such file or repository, no access...): the download says which
    except Exception:  # noqa: BLE001 - DNS, refused connection, proxy and timeout errors come in many types
        return False
    return True


def hub_file(repo_id: str, filenames: str | Sequence[str], label: str | None = None) -> Path:
    """The local path of the first of `filenames` that the repository has, downloaded into (or
    found in) the Hugging Face cache.

    Several names allow a preferred file with a fallback (open_clip's safetensors weights, else its
    pickle). Offline, or when the Hub cannot be reached, only the cache is looked at, at once.
    `label` names what the files are for in errors, before the `hf-hub:` source.
    """
    hf = _huggingface_hub()
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    names = [filenames] if isinstance(filenames, str) else list(filenames)
    source = f"{HUB_PREFIX}{repo_id}"
    who = source if label is None else f"{label} ({source})"
    not_cached = False
    cached_only = _offline()
    for name in names:
        try:
            if not cached_only and not isinstance(hf.try_to_load_from_cache(repo_id, name), str):
                cached_only = not _reachable(hf, repo_id, name)
            return Path(hf.hf_hub_download(repo_id=repo_id, filename=name, local_files_only=cached_only))
        except HFValidationError:
            raise CIRError(f"'{source}': not a Hugging Face Hub repository id "
                           f"(expected {HUB_PREFIX}ORG/NAME)") from None
        except GatedRepoError:
            raise CIRError(f"{who}: the repository is gated: accept its terms on huggingface.co and log in "
                           f"(`hf auth login` or HF_TOKEN)") from None
        except RepositoryNotFoundError:
            raise CIRError(f"{who}: no such repository on the Hugging Face Hub (or it is private: log in "
                           f"with `hf auth login` or set HF_TOKEN)") from None
        except RevisionNotFoundError:
            raise CIRError(f"{who}: the repository has no 'main' revision") from None
        except LocalEntryNotFoundError:
            not_cached = True  # offline or unreachable, and not in the cache: maybe the next name is
        except EntryNotFoundError:
            pass  # the repository does not have this file: try the next name
    wanted = " or ".join(names)
    if not_cached:
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hugging Face Hub could not be reached"
        raise CIRError(f"{who}: {wanted} is not in the Hugging Face cache ({_cache_dir()}) and {why}; "
                       f"downloading it needs internet access once "
                       f"({'or check the name' if label is None else 'or use a local weights file instead'})")
    raise CIRError(f"{who}: the repository has no {wanted}")


def snapshot_revision(path: Path) -> str | None:
    """The commit a file of huggingface_hub's cache belongs to (`.../snapshots/<commit>/file`)."""
    parts = Path(path).parts
    return parts[-2] if len(parts) >= 3 and parts[-3] == "snapshots" else None


def push_token(repo_id: str) -> str:
    """The token a push to `repo_id` will use, checked before any work: one line if there is none
    (`hf auth login` or HF_TOKEN) or if offline mode forbids the upload."""
    hf = _huggingface_hub()
    token = hf.get_token()
    if not token:
        raise CIRError(f"pushing to {HUB_PREFIX}{repo_id} needs a Hugging Face token with write access: "
                       f"run `hf auth login` or set HF_TOKEN")
    if _offline():
        raise CIRError(f"cannot push to {HUB_PREFIX}{repo_id}: HF_HUB_OFFLINE is set (unset it to upload)")
    return token


def push_folder(folder: Path, repo_id: str, token: str, private: bool = False,
                commit_message: str = "Upload model exported by clip-cir") -> str:
    """Upload every file of `folder` to the model repository `repo_id` (created if missing) and
    return its URL. Network and permission failures become one line; the folder stays as it is."""
    hf = _huggingface_hub()
    try:
        url = hf.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        hf.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, commit_message=commit_message)
    except Exception as e:  # noqa: BLE001 - auth, HTTP and connection errors come in many types
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise CIRError(f"could not push to {HUB_PREFIX}{repo_id}: {reason} (the exported folder {folder} is "
                       f"complete: retry with `hf upload {repo_id} {folder} .`)") from None
    return str(url)
