"""Loading a model, tokenizer or config by `from_pretrained` from a local folder or a hub id, with
one clear error when neither is there (this machine may be offline; the study never needs the hub)."""
from __future__ import annotations

from pathlib import Path

from kl_utils.core.command import UserError


class ModelUnavailable(UserError, OSError):
    """A model.pretrained that is neither a folder here nor reachable on the hub. An OSError too, so
    callers that already treat an unreachable model as a missing input (plan) keep doing so."""


def from_pretrained(loader, path_or_id: str | Path, what: str = "model", **kwargs):
    """loader.from_pretrained(path_or_id, **kwargs); an OSError (no such folder, hub unreachable, no
    such repository; a folder that holds no checkpoint) becomes one line naming the input and what to do."""
    try:
        return loader.from_pretrained(str(path_or_id), **kwargs)
    except (OSError, ValueError) as err:
        is_folder = Path(path_or_id).is_dir()
        if isinstance(err, ValueError) and not is_folder:
            raise  # not about finding the files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = ("the folder exists but is not a complete checkpoint" if is_folder
                 else "it is not a folder here, and the Hugging Face hub did not provide it")
        raise ModelUnavailable(
            f"cannot load the {what} {str(path_or_id)!r}: {where} ({first}). Give model.pretrained as a "
            "local folder (e.g. after `huggingface-cli download` on a machine with internet), or a "
            "packaged model (smollm2-135m)") from err
