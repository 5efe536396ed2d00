"""kvtc's exceptions: one class per kvtc::StatusCode (include/kvtc/status.hpp), all KvtcError."""

from __future__ import annotations


class KvtcError(Exception):
    """A kvtc call failed; the message is the library's. ``code`` is the stable numeric status."""

    code = 9


class InvalidArgumentError(KvtcError, ValueError):
    """The caller passed something unusable (bad option, wrong shape or dtype)."""

    code = 1


class UnsupportedError(KvtcError):
    """Well-formed, but a feature or version this build does not handle."""

    code = 2


class CorruptError(KvtcError):
    """Bytes that do not follow the format (truncated, out-of-range fields)."""

    code = 3


class ChecksumError(CorruptError):
    """A stored checksum does not match the bytes it covers."""

    code = 4


class OutOfSpaceError(KvtcError):
    """A caller-provided buffer is too small."""

    code = 5


class OutOfMemoryError(KvtcError, MemoryError):
    """An allocation failed."""

    code = 6


class KvtcIOError(KvtcError, OSError):
    """The operating system refused a read or write."""

    code = 7


class CudaError(KvtcError):
    """A CUDA call failed."""

    code = 8


class InternalError(KvtcError):
    """A bug in kvtc: please report it."""

    code = 9


class MismatchError(KvtcError):
    """Two valid inputs that do not belong together (a container and another model's calibration)."""

    code = 10


def error_classes() -> dict:
    classes = [InvalidArgumentError, UnsupportedError, CorruptError, ChecksumError, OutOfSpaceError,
               OutOfMemoryError, KvtcIOError, CudaError, InternalError, MismatchError]
    return {c.code: c for c in classes}
