"""Loading third-party weights safely: a pickle runs code, and so does a model folder's own Python.

- `torch_file`: a `.pt` / `.pth` checkpoint through `torch.load(weights_only=True)` (tensors, containers
  and plain values only); a file that needs more (pickled classes or functions) is refused with an error
  naming the file and what to do, never retried unsafely.
- `pretrained`: a Hugging Face folder through a native `transformers` class, `local_files_only`, and
  `trust_remote_code` off unless the metric's config section sets `trust_remote_code: true` by name
  (it would import and run the Python files in the model folder).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any


class UnsafeCheckpoint(ValueError):
    """A checkpoint file holds more than weights (pickled code), or a folder would need its own code."""


def torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` on CPU; UnsafeCheckpoint naming the file when it needs more."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpoint(
            f"{path}: this {what} holds more than tensors (torch.load(weights_only=True) refused it: {first[:300]}); "
            f"it is not unpickled, since that would run code from the file: save its state dict "
            f"(or a .safetensors file) from a trusted environment and point the config there") from None


def trust_remote_code(sec: dict[str, Any], key: str) -> bool:
    """The section's `trust_remote_code` (default false); anything but a literal true/false is an error."""
    value = sec.get("trust_remote_code", False)
    if not isinstance(value, bool):
        raise ValueError(f"{key}.trust_remote_code: {value!r} must be true or false")
    return value


def pretrained(cls, folder: str | os.PathLike, sec: dict[str, Any], key: str, **kwargs):
    """`cls.from_pretrained(folder)` offline, running the folder's own code only if `key.trust_remote_code`."""
    return cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust_remote_code(sec, key),
                               **kwargs)
