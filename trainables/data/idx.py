"""The IDX file format of MNIST and Fashion-MNIST, read without torchvision.

IDX is a tiny format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the
number of dimensions, each dimension as a big-endian uint32, then the values, big-endian,
row-major. Reading it here takes a dozen lines, where torchvision would be a heavy optional
dependency whose wheels must match the installed torch exactly.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from trainables.data.splits import DataError

__all__ = ["read_idx"]

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed when its name ends in ``.gz``) into an array."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                raw = stream.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise DataError(f"{path}: is not an IDX file (its first bytes are not an IDX header)")
    dtype = _TYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: has a truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: its IDX header promises shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(raw) - header}; the file is truncated or corrupt, copy it again"
        )
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)
