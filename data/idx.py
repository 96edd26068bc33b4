"""Reader and writer for the IDX format of (Fashion-)MNIST, plain or gzipped.

An IDX file is: two zero bytes, a type byte, a byte with the number of dimensions ``d``, ``d``
big-endian uint32 sizes, then the values in row-major order (big-endian for multi-byte types).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from genutil.errors import DataError

__all__ = ["read_idx", "write_idx"]

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == _GZIP_MAGIC:  # by content, not by name: some mirrors ship .gz files unpacked
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is a damaged gzip file ({exc}): download it again") from exc
    return raw


def read_idx(path: Path) -> np.ndarray:
    """The array stored in IDX file ``path`` (gzipped or not), in native byte order.

    Raises DataError naming the file if it is not a well-formed IDX file.
    """
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad header): download it again")
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path} is truncated inside its header: download it again")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header_size != count * dtype.itemsize:
        raise DataError(
            f"{path} holds {len(raw) - header_size} data bytes but its header {shape} needs "
            f"{count * dtype.itemsize}: download it again"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64) as an IDX file."""
    codes = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    payload = header + body
    with open(path, "wb") as handle:
        handle.write(gzip.compress(payload) if compress else payload)
