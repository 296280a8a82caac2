"""Reading checkpoint weights safely: safetensors (single or sharded), pickle only when allowed.

Files are checked before a Rust library sees them, so a truncated download, an HTML error page or a
Git-LFS pointer gets a message that names the file instead of a panic.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..rust import guarded

log = logging.getLogger(__name__)

MAX_HEADER = 100 * 1024 * 1024  # safetensors itself refuses headers above 100 MB
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
CONVERT_HINT = ("convert it to safetensors (`transformers` can: load the folder and call save_pretrained(folder, "
                "safe_serialization=True)), or allow pickle files explicitly if you trust where it came from")


def _sniff(path: Path, head: bytes) -> None:
    text = head[:200].lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path} is a Git LFS pointer, not the weights; run `git lfs pull` in that folder or download the real file")
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        raise CheckpointError(f"{path} is an HTML/XML page, not weights (a failed download?); download the file again")


def safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape), after checking that the file is a complete safetensors file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if size == 0:
                raise CheckpointError(f"{path} is empty (0 bytes); download or save the weights again")
            _sniff(path, head + f.read(192))
            if size < 8:
                raise CheckpointError(f"{path} is truncated ({size} bytes); download or save the weights again")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n > size - 8:
                raise CheckpointError(f"{path} has a header claiming {n} bytes, more than the file holds ({size} bytes): "
                                      "the file is truncated or not safetensors")
            f.seek(8)
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} has an unreadable header; the file is corrupt, download or save it again") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a malformed header")
    out = {}
    data_size = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
            start, end = int(start), int(end)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry; the file is corrupt") from exc
        numel = 1
        for s in shape:
            numel *= s
        if end > data_size or start > end or end - start != numel * DTYPE_BYTES.get(dtype, 0):
            raise CheckpointError(f"{path} is truncated or corrupt: tensor {name!r} claims bytes {start}..{end} "
                                  f"but the data section holds {data_size}; download or save the weights again")
        out[name] = (dtype, shape)
    return out


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return guarded(lambda: load_file(str(path)), CheckpointError, f"cannot read weights from {path}")


class WeightFiles:
    """The weight files of one folder: their tensor names and shapes, and loading on demand."""

    def __init__(self, folder: Path, allow_pickle: bool = False) -> None:
        self.folder = folder
        self.files: list[Path] = []
        self.shapes: dict[str, list[int]] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
        if single.is_file():
            self.files = [single]
        elif index.is_file():
            self.files = self._shards(index)
        else:
            pickles = [p for p in (folder / "pytorch_model.bin",) if p.is_file()] or sorted(folder.glob("pytorch_model*.bin"))
            if not pickles:
                raise CheckpointError(f"no weights in {folder}: expected model.safetensors "
                                      "(or model.safetensors.index.json with its shards)")
            if not allow_pickle:
                raise CheckpointError(f"{pickles[0]} is a pickle file, which can run code when loaded; {CONVERT_HINT}")
            self._pickled = {}
            for p in pickles:
                self._pickled.update(self._load_pickle(p))
            self.shapes = {k: list(v.shape) for k, v in self._pickled.items()}
            return
        for f in self.files:
            self.shapes.update({k: shape for k, (_, shape) in safetensors_header(f).items()})

    def _shards(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError("weight_map must map tensor names to file names")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid shard index (it needs a 'weight_map'); save the model again") from exc
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (self.folder / n).is_file()]
        if missing:
            raise CheckpointError(f"shard(s) {', '.join(missing)} listed in {index.name} are missing from {self.folder}; download them too")
        return [self.folder / n for n in names]

    @staticmethod
    def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
        log.warning("loading pickle weights from %s with weights_only=True", path)
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
            raise CheckpointError(f"cannot read {path} as weights-only torch pickle: {exc}") from exc
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(f"{path} does not hold a plain state dict (name -> tensor); save the model's state_dict()")
        return sd

    def load(self) -> dict[str, torch.Tensor]:
        if self._pickled is not None:
            return self._pickled
        out: dict[str, torch.Tensor] = {}
        for f in self.files:
            out.update(load_safetensors(f))
        return out
