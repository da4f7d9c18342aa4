"""Streaming safetensors reader and writer (no memory map, no pickle).

The format is an 8-byte little-endian header length, a JSON header mapping tensor names to dtype,
shape and byte offsets, then the raw bytes. Reading one tensor reads exactly its bytes into a fresh
array, so peak host memory while loading stays near one tensor; writing takes tensors one at a time
from a producer, so exporting never gathers the whole model on the host.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class TensorInfo(NamedTuple):
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor name -> info, in file order. Raises ValueError naming the file if it is malformed."""
    with open(path, "rb") as f:
        raw_length = f.read(8)
        if len(raw_length) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", raw_length)
        if length > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {length})")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a safetensors file (bad JSON header: {err})") from None
    base = 8 + length
    infos = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        infos[name] = TensorInfo(
            DTYPES[entry["dtype"]], tuple(entry["shape"]), base + start, base + end
        )
    return dict(sorted(infos.items(), key=lambda item: item[1].start))


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype, alignment: int = 64) -> np.ndarray:
    """An uninitialised array whose data is `alignment`-byte aligned: JAX's CPU backend then adopts
    it without a copy, so a loaded tensor occupies host memory once."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def read_tensor(
    path: str | os.PathLike, info: TensorInfo, dtype: np.dtype | None = None
) -> np.ndarray:
    """Reads one tensor into a fresh aligned array, converted to `dtype` if given."""
    count = int(np.prod(info.shape, dtype=np.int64))
    if (info.end - info.start) != count * info.dtype.itemsize:
        raise ValueError(
            f"{path}: byte range of a {info.shape} {info.dtype} tensor is inconsistent"
        )
    array = aligned_empty(info.shape, info.dtype)
    with open(path, "rb") as f:
        f.seek(info.start)
        if f.readinto(memoryview(array.reshape(-1).view(np.uint8))) != info.end - info.start:
            raise ValueError(f"{path}: file is truncated")
    if dtype is None or np.dtype(dtype) == info.dtype:
        return array
    converted = aligned_empty(info.shape, dtype)
    np.copyto(converted, array, casting="unsafe")
    return converted


class TensorSpec(NamedTuple):
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]  # called once, when the tensor is written


def write_file(
    path: str | os.PathLike, specs: Iterable[TensorSpec], metadata: dict[str, str] | None = None
) -> None:
    """Writes tensors one at a time (each `produce()` result must match its declared shape)."""
    specs = list(specs)
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for spec in specs:
        size = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
        header[spec.name] = {
            "dtype": DTYPE_NAMES[np.dtype(spec.dtype)],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned, as safetensors does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for spec in specs:
            array = np.ascontiguousarray(spec.produce(), dtype=spec.dtype)
            if array.shape != tuple(spec.shape):
                raise ValueError(
                    f"tensor {spec.name!r}: produced {array.shape}, declared {spec.shape}"
                )
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
