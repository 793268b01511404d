"""Where the weights come from: the generated tiny checkpoint, a directory, or the hub cache."""

from __future__ import annotations

import os
from pathlib import Path

from serve_app.core.modes import ModelFamily
from serve_app.errors import ServerError

TINY = "tiny"


class ModelUnavailableError(ServerError):
    """The configured weights cannot be found or fetched."""

    status_code = 503
    code = "model_unavailable"


def _hint(model: str) -> str:
    return (
        f"Provide the weights for {model!r} in one of these ways: (1) set engine.model to a "
        "local directory holding config.json, the tokenizer and *.safetensors; (2) fill the "
        f"Hugging Face cache where the hub is reachable (`hf download {model}`) and mount it "
        "(HF_HOME) with HF_HUB_OFFLINE=1; (3) use engine.model: tiny for a generated test model."
    )


def resolve_model(model: str, family: ModelFamily = ModelFamily.OCR1) -> Path:
    """The local directory to load ``model`` from.

    Raises:
        ModelUnavailableError: The directory or hub snapshot is missing and cannot be fetched.
    """
    if model == TINY:
        from serve_app.checkpoint.tiny import ensure_checkpoint

        return ensure_checkpoint(family=family)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(f"{path} has no config.json. " + _hint(model))
        return path
    if model.startswith(("/", ".", "~")) or model.count("/") != 1:
        raise ModelUnavailableError(f"model directory {model!r} does not exist. " + _hint(model))
    return _from_hub(model)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelUnavailableError(
            f"{repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set. "
            + _hint(repo_id)
        ) from None
    try:
        return Path(snapshot_download(repo_id))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise ModelUnavailableError(
            f"{repo_id!r} could not be downloaded ({type(exc).__name__}). " + _hint(repo_id)
        ) from None
