"""Reading checkpoint weights safely: safetensors (single or sharded), pickle only when allowed.

Files are checked before anything reads tensor data, so a truncated download, an HTML error page or a
Git-LFS pointer gets a message that names the file instead of a panic. Tensors are then read tensor by
tensor, a few MB of rows at a time, straight into the loaded model's parameters (`fill`): the loader never
holds a second copy of the weights, and file pages are never mapped into the process (they stay in the
OS page cache, which is not the process's resident memory).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import CheckpointError, UnsupportedArchitectureError
from ..rust import guarded

log = logging.getLogger(__name__)

MAX_HEADER = 100 * 1024 * 1024  # safetensors itself refuses headers above 100 MB
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "U32": 4, "U64": 8}
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_OTHER_DTYPES = {"I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}
QUANTISED_DTYPES = {"I8": "8-bit integer", "U8": "8-bit unsigned integer", "I16": "16-bit integer",
                    "I32": "packed 32-bit integer", "U32": "packed 32-bit integer", "F8_E4M3": "FP8 (e4m3)",
                    "F8_E5M2": "FP8 (e5m2)", "F8_E8M0": "FP8 scale (e8m0)", "F4": "FP4", "F6_E2M3": "FP6",
                    "F6_E3M2": "FP6"}
CONVERT_HINT = ("convert it to safetensors (`transformers` can: load the folder and call save_pretrained(folder, "
                "safe_serialization=True)), or allow pickle files explicitly if you trust where it came from")
CHUNK_BYTES = 4 << 20  # rows read per step when converting: small enough to stay in cache while transposing
DIRECT_CHUNK_BYTES = 64 << 20  # rows read per step straight into a parameter (no conversion)


@dataclass(frozen=True)
class TensorEntry:
    """Where one checkpoint tensor lies: its file, dtype, shape and absolute byte range."""

    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1


def _sniff(path: Path, head: bytes) -> None:
    text = head[:200].lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path} is a Git LFS pointer, not the weights; run `git lfs pull` in that folder or download the real file")
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        raise CheckpointError(f"{path} is an HTML/XML page, not weights (a failed download?); download the file again")


def safetensors_entries(path: Path) -> dict[str, TensorEntry]:
    """name -> TensorEntry, after checking that the file is a complete safetensors file."""
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
    data_start, data_size = 8 + n, size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
            start, end = int(start), int(end)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry; the file is corrupt") from exc
        numel = 1
        for s in shape:
            numel *= s
        # a dtype we do not know (a newer packed format) cannot be size-checked; it is refused if used
        width = DTYPE_BYTES.get(dtype)
        if end > data_size or start > end or (width is not None and end - start != numel * width):
            raise CheckpointError(f"{path} is truncated or corrupt: tensor {name!r} claims bytes {start}..{end} "
                                  f"but the data section holds {data_size}; download or save the weights again")
        out[name] = TensorEntry(path, dtype, shape, data_start + start, data_start + end)
    return out


def safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape), after checking that the file is a complete safetensors file."""
    return {k: (e.dtype, list(e.shape)) for k, e in safetensors_entries(path).items()}


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return guarded(lambda: load_file(str(path)), CheckpointError, f"cannot read weights from {path}")


_TORCH_TO_CODE = {v: k for k, v in {**FLOAT_DTYPES, **_OTHER_DTYPES}.items()}


class WeightFiles:
    """The weight files of one folder: their tensor names, shapes and dtypes, and reading on demand
    (rows of one tensor at a time). Use as a context manager, or call close(), to close the files."""

    def __init__(self, folder: Path, allow_pickle: bool = False) -> None:
        self.folder = folder
        self.files: list[Path] = []
        self.shapes: dict[str, list[int]] = {}
        self.entries: dict[str, TensorEntry] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        self._handles: dict[Path, BinaryIO] = {}
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
            self.entries.update(safetensors_entries(f))
        self.shapes = {k: list(e.shape) for k, e in self.entries.items()}

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

    # -- what the files hold -----------------------------------------------------------------
    def dtype_code(self, key: str) -> str:
        """The safetensors dtype code of `key` ("BF16", "F32", "I8", ...)."""
        if self._pickled is not None:
            return _TORCH_TO_CODE.get(self._pickled[key].dtype, str(self._pickled[key].dtype))
        return self.entries[key].dtype

    def nbytes(self, key: str) -> int:
        if self._pickled is not None:
            t = self._pickled[key]
            return t.numel() * t.element_size()
        return self.entries[key].nbytes

    def file_of(self, key: str) -> str:
        return self.entries[key].path.name if self._pickled is None else "pytorch_model.bin"

    def dominant_float_dtype(self, keys: set[str] | None = None) -> torch.dtype | None:
        """The floating dtype holding most of the bytes (of `keys`, default all): the checkpoint's own dtype."""
        by_dtype: dict[str, int] = {}
        for k in keys if keys is not None else self.shapes:
            code = self.dtype_code(k)
            if code in FLOAT_DTYPES:
                by_dtype[code] = by_dtype.get(code, 0) + self.nbytes(k)
        return FLOAT_DTYPES[max(by_dtype, key=by_dtype.get)] if by_dtype else None

    def check_floats(self, keys: set[str]) -> None:
        """Refuse quantised or integer tensors where our parameters (all floats) need floats."""
        bad = sorted(k for k in keys if self.dtype_code(k) not in FLOAT_DTYPES)
        if not bad:
            return
        code = self.dtype_code(bad[0])
        kind = QUANTISED_DTYPES.get(code)
        what = f"{kind} ({code})" if kind else code
        names = ", ".join(f"{k} ({self.dtype_code(k)}, in {self.file_of(k)})" for k in bad[:4]) + (" …" if len(bad) > 4 else "")
        raise UnsupportedArchitectureError(
            f"{len(bad)} weight tensor(s) in {self.folder} are stored as {what} where floats are expected: {names}. "
            "Quantised weights are not supported; open the original float16/bfloat16/float32 checkpoint")

    # -- reading -----------------------------------------------------------------------------
    def _handle(self, path: Path) -> BinaryIO:
        if path not in self._handles:
            try:
                self._handles[path] = path.open("rb", buffering=0)
            except OSError as exc:
                raise CheckpointError(f"cannot read {path}: {exc}") from exc
        return self._handles[path]

    def read_rows(self, key: str, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows start:stop (along dim 0) of tensor `key` on the CPU in its own dtype. With `out` (a contiguous
        CPU tensor of that dtype and shape) the bytes are read straight into it."""
        if self._pickled is not None:
            t = self._pickled[key]
            t = t[start:stop] if t.dim() else t
            return out.copy_(t) if out is not None else t
        e = self.entries[key]
        dtype = FLOAT_DTYPES.get(e.dtype) or _OTHER_DTYPES[e.dtype]
        row_bytes = e.nbytes // e.n_rows if e.n_rows else 0
        shape = (stop - start, *e.shape[1:]) if e.shape else ()
        if out is None:
            out = torch.empty(shape, dtype=dtype)
        want = (stop - start) * row_bytes
        buf = out.view(-1).view(torch.uint8).numpy() if out.numel() else memoryview(b"")
        f = self._handle(e.path)
        try:
            f.seek(e.start + start * row_bytes)
            got = 0
            view = memoryview(buf)
            while got < want:
                n = f.readinto(view[got:want])
                if not n:
                    break
                got += n
        except OSError as exc:
            raise CheckpointError(f"cannot read {key!r} from {e.path}: {exc}") from exc
        if got != want:
            raise CheckpointError(f"{e.path} ended inside tensor {key!r}; the file is truncated, download or save it again")
        return out

    def read(self, key: str) -> torch.Tensor:
        shape = self.shapes[key]
        return self.read_rows(key, 0, shape[0] if shape else 1)

    def row_bytes(self, key: str) -> int:
        shape = self.shapes[key]
        return self.nbytes(key) // max(1, shape[0] if shape else 1)

    def load(self) -> dict[str, torch.Tensor]:
        """Every tensor at once (tools that want a plain state dict; the loader streams instead)."""
        if self._pickled is not None:
            return self._pickled
        out: dict[str, torch.Tensor] = {}
        for f in self.files:
            out.update(load_safetensors(f))
        return out

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()

    def __enter__(self) -> WeightFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- streaming checkpoint tensors into our parameters -------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """Rows start:stop of checkpoint tensor `key` go into `dest` (a view of one of our parameters, in the
    checkpoint's orientation)."""

    key: str
    start: int
    stop: int
    dest: torch.Tensor


def pieces(source: object, keys: tuple[str, ...], dest: torch.Tensor) -> list[Piece] | None:
    """How one parameter is filled, for the conversion ops that are row copies (copy, T, cat, rows);
    None for any other op (the caller then converts whole tensors with source.to_ours)."""
    op = getattr(source, "op", None)
    n = dest.shape[0] if dest.dim() else 1
    if op == "copy":
        return [Piece(keys[0], 0, n, dest)]
    if op == "T" and dest.dim() == 2:
        return [Piece(keys[0], 0, dest.shape[1], dest.t())]
    if op == "cat":
        sizes = list(getattr(source, "sizes", ()) or [n // len(keys)] * len(keys))
        out, row = [], 0
        for key, size in zip(keys, sizes):
            out.append(Piece(key, 0, size, dest[row:row + size]))
            row += size
        return out
    if op == "rows":
        start, stop, _ = source.sizes  # type: ignore[attr-defined]
        return [Piece(keys[0], start, stop, dest)]
    return None


Tick = Callable[[int, str], None]  # (bytes just done, file name): progress and the cancel check


def _chunks(n_rows: int, row_bytes: int, budget: int) -> Iterator[tuple[int, int]]:
    step = max(1, budget // max(1, row_bytes))
    for r in range(0, n_rows, step):
        yield r, min(n_rows, r + step)


def fill_piece(weights: WeightFiles, piece: Piece, tick: Tick) -> None:
    """Copy one piece in chunks of rows: read straight into the parameter when no conversion is needed,
    else through a small buffer (dtype conversion, transposition and the device copy happen in copy_)."""
    dest, rows = piece.dest, piece.stop - piece.start
    src_row_bytes = weights.row_bytes(piece.key)
    name = weights.file_of(piece.key)
    direct = (weights._pickled is None and dest.device.type == "cpu" and dest.is_contiguous()
              and FLOAT_DTYPES.get(weights.dtype_code(piece.key)) == dest.dtype)
    if dest.dim() == 0:
        dest.copy_(weights.read_rows(piece.key, 0, 1).reshape(()))
        tick(src_row_bytes, name)
        return
    budget = DIRECT_CHUNK_BYTES if direct or dest.device.type != "cpu" else CHUNK_BYTES
    for r0, r1 in _chunks(rows, src_row_bytes, budget):
        if direct:
            weights.read_rows(piece.key, piece.start + r0, piece.start + r1, out=dest[r0:r1])
        else:
            chunk = weights.read_rows(piece.key, piece.start + r0, piece.start + r1)
            dest[r0:r1].copy_(chunk)
            del chunk  # not pinned by a traceback if the next tick cancels
        tick((r1 - r0) * src_row_bytes, name)


def fill_whole(weights: WeightFiles, source: object, keys: tuple[str, ...], dest: torch.Tensor, tick: Tick) -> None:
    """Fallback for a conversion op that is not a row copy: whole checkpoint tensors through source.to_ours."""
    parts = [weights.read(k) for k in keys]
    dest.copy_(source.to_ours(parts))  # type: ignore[attr-defined]
    del parts
    for k in keys:
        tick(weights.nbytes(k), weights.file_of(k))
