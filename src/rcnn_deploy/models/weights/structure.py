"""What a weight file is, and whether its structure holds, checked before anything is loaded or allocated.

A pickle declares the length of each bytes / string / long argument before its data, and CPython's unpickler
allocates that length before reading (a 96-byte file can ask for gigabytes); torch's legacy format declares
each storage's element count in the pickle and allocates it while unpickling; a torch zip's central
directory declares record sizes. Every such size is checked against the bytes the file really has left
before the real load runs. Torch zip files carry a CRC-32 per record: they are all verified, so overwritten
tensor bytes are caught. Detectron2 .pkl files and legacy (non-zip) .pth files carry no checksum: a flipped
byte inside their tensor data cannot be detected (only its NaN / Inf results are, by the finite check).

Nothing here builds a real object: pickles are walked opcode by opcode, or read into inert stand-ins.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .errors import WeightsError

LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]  # legacy torch.save header
_CHUNK = 1 << 22


def sniff(path: Path) -> str:
    """'torch' for torch.save files (zip or legacy format), else 'other'."""
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if head.startswith(LEGACY_TORCH_MAGIC) or zipfile.is_zipfile(path):
        return "torch"
    return "other"


def truncated_zip(path: Path) -> None:
    """A file that starts like a zip archive (torch.save's format) but has no central directory at its end."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise WeightsError(
            f"{path}: a zip file (torch.save's format) without its central directory: the file is truncated; "
            "copy or download it again."
        )


_STORAGE_ITEMSIZE = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8,
    "UntypedStorage": 1,
}


def _pickle_arg_sizes() -> Dict[int, Tuple[str, int]]:
    import pickletools

    table = {}
    for op in pickletools.opcodes:
        table[ord(op.code)] = (op.arg.name if op.arg is not None else "", op.arg.n if op.arg is not None else 0)
    return table


_OPCODES: Optional[Dict[int, Tuple[str, int]]] = None
_COUNT_BYTES = {-2: ("<B", 1), -3: ("<i", 4), -4: ("<I", 4), -5: ("<Q", 8)}  # pickletools' TAKEN_FROM_ARGUMENT*


def scan_pickle(f: Any, end: int, what: str) -> int:
    """Walk one pickle's opcodes from ``f``'s position without building anything; every declared length must
    fit in the ``end - position`` bytes left. Returns the offset after STOP. Raises WeightsError."""
    global _OPCODES
    if _OPCODES is None:
        _OPCODES = _pickle_arg_sizes()
    while True:
        pos = f.tell()
        code = f.read(1)
        if not code:
            raise WeightsError(f"{what}: the pickle stops at byte {pos} before its end (the file is truncated).")
        entry = _OPCODES.get(code[0])
        if entry is None:
            raise WeightsError(f"{what}: byte {pos} is not a pickle opcode ({code!r}): the file is damaged.")
        name, n = entry
        if n > 0:
            _skip(f, n, end, what)
        elif n == -1:  # arguments ending at a newline (two of them for GLOBAL / INST)
            for _ in range(2 if name == "stringnl_noescape_pair" else 1):
                line = f.readline(1 << 16)
                if not line.endswith(b"\n"):
                    raise WeightsError(f"{what}: unterminated text argument at byte {pos}: the file is damaged.")
        elif n in _COUNT_BYTES:
            fmt, width = _COUNT_BYTES[n]
            raw = f.read(width)
            if len(raw) < width:
                raise WeightsError(f"{what}: the pickle stops at byte {pos} (the file is truncated).")
            count = struct.unpack(fmt, raw)[0]
            if count < 0:
                raise WeightsError(f"{what}: negative length {count} at byte {pos}: the file is damaged.")
            _skip(f, count, end, what, pos)
        if code == pickle.STOP:
            return f.tell()


def _skip(f: Any, n: int, end: int, what: str, at: Optional[int] = None) -> None:
    left = end - f.tell()
    if n > left:
        where = f" at byte {at}" if at is not None else ""
        raise WeightsError(
            f"{what}: declares {n} bytes of data{where} but only {left} bytes are left in the file "
            "(truncated or damaged); nothing was allocated."
        )
    f.seek(n, 1)


class _Inert:
    """Stands for every global of a pickle read only for its structure: takes anything, runs nothing."""

    qualified = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _DryUnpickler(pickle.Unpickler):
    """Reads a (pre-scanned) pickle into inert objects to collect its persistent ids (torch storages)."""

    def __init__(self, f: Any) -> None:
        super().__init__(f, encoding="latin1")
        self.pids: List[Any] = []
        self._types: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in self._types:
            self._types[key] = type("Inert", (_Inert,), {"qualified": f"{module}.{name}"})
        return self._types[key]

    def persistent_load(self, pid: Any) -> Any:
        self.pids.append(pid)
        return _Inert()


def _dry_load(f: Any, what: str) -> Tuple[Any, List[Any]]:
    try:
        u = _DryUnpickler(f)
        return u.load(), u.pids
    except Exception as e:  # any malformed pickle
        raise WeightsError(f"{what}: the pickle is damaged ({type(e).__name__}: {str(e)[:200]}).") from None


def _storage_bytes(pid: Any, what: str) -> Optional[Tuple[str, int]]:
    """(key, bytes) of a torch ``('storage', type, key, location, numel, ...)`` persistent id."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise WeightsError(f"{what}: unexpected persistent id {str(pid)[:80]!r}: the file is damaged.")
    kind, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise WeightsError(f"{what}: malformed storage record {str(pid)[:80]!r}: the file is damaged.")
    itemsize = _STORAGE_ITEMSIZE.get(str(getattr(kind, "qualified", "")).rsplit(".", 1)[-1])
    return None if itemsize is None else (key, numel * itemsize)


def check_torch_file(path: Path) -> None:
    """Structure of a ``torch.save`` file before torch reads it: zip records within the file and matching
    their CRC-32, every storage's declared size equal to its record (zip) or within the file (legacy)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        _check_torch_zip(path)
    else:
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_TORCH_MAGIC))
        if head.startswith(LEGACY_TORCH_MAGIC):
            _check_torch_legacy(path)


def _check_torch_zip(path: Path) -> None:
    size = path.stat().st_size
    what = str(path)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            pkls = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if len(pkls) != 1:
                raise WeightsError(f"{what}: a torch zip file has one data.pkl record, this one has {len(pkls)}.")
            for info in infos:
                if info.compress_type == zipfile.ZIP_STORED:
                    bad = info.file_size != info.compress_size
                elif info.compress_type == zipfile.ZIP_DEFLATED:
                    bad = info.file_size > 1100 * max(info.compress_size, 1)  # deflate expands at most ~1032x
                else:
                    raise WeightsError(f"{what}: record {info.filename} uses zip compression {info.compress_type}.")
                if bad or info.header_offset + info.compress_size > size:
                    raise WeightsError(
                        f"{what}: record {info.filename} declares {info.file_size} bytes, more than the file "
                        f"({size} bytes) holds: the file is truncated or damaged; nothing was allocated."
                    )
            for info in infos:  # zipfile verifies each record's CRC-32 when it is read to the end
                with z.open(info) as f:
                    while f.read(_CHUNK):
                        pass
            prefix = pkls[0].filename[: -len("data.pkl")]
            data = z.read(pkls[0])
            records = {i.filename: i.file_size for i in infos}
    except WeightsError:
        raise
    except zipfile.BadZipFile as e:
        text = str(e)
        if text.startswith("Bad CRC-32"):
            raise WeightsError(
                f"{what}: {text.replace('Bad CRC-32 for file', 'the CRC-32 of record')} does not match its "
                "contents: the tensor data was modified or damaged after the file was saved."
            ) from None
        raise WeightsError(f"{what}: damaged zip structure ({text[:200]}); the file is truncated or corrupt.") from None
    except (OSError, EOFError, ValueError, UnicodeDecodeError, NotImplementedError, RuntimeError, struct.error) as e:
        raise WeightsError(f"{what}: damaged zip structure ({type(e).__name__}: {str(e)[:200]}).") from None
    buf = io.BytesIO(data)
    scan_pickle(buf, len(data), f"{what} ({pkls[0].filename})")
    buf.seek(0)
    _, pids = _dry_load(buf, f"{what} ({pkls[0].filename})")
    for pid in pids:
        found = _storage_bytes(pid, what)
        if found is None:
            continue
        key, nbytes = found
        record = f"{prefix}data/{key}"
        if record not in records:
            raise WeightsError(f"{what}: tensor storage {key} has no record {record}: the file is damaged.")
        if records[record] != nbytes:
            raise WeightsError(
                f"{what}: tensor storage {key} declares {nbytes} bytes but its record holds {records[record]}: "
                "the file is damaged; nothing was allocated."
            )


def _check_torch_legacy(path: Path) -> None:
    """torch's legacy (pre-1.6, ``_use_new_zipfile_serialization=False``) layout: magic, protocol and system
    pickles, the object pickle (storages as persistent ids with their element counts), the list of storage
    keys, then per key an int64 element count and the raw bytes."""
    size = path.stat().st_size
    what = str(path)
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, sys info
            scan_pickle(f, size, what)
        start = f.tell()
        scan_pickle(f, size, what)
        f.seek(start)
        _, pids = _dry_load(f, what)
        declared: Dict[str, int] = {}
        total = 0
        for pid in pids:
            found = _storage_bytes(pid, what)
            if found is None:
                raise WeightsError(f"{what}: storage type {getattr(pid[1], 'qualified', '?')} is not supported.")
            key, nbytes = found
            if key not in declared:
                declared[key] = nbytes
                total += nbytes
        if total > size:
            raise WeightsError(
                f"{what}: declares {total} bytes of tensor data but the file has {size} bytes: it is truncated "
                "or damaged; nothing was allocated."
            )
        start = f.tell()
        scan_pickle(f, size, what)
        f.seek(start)
        keys, _ = _dry_load(f, what)
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(declared):
            raise WeightsError(f"{what}: the storage key list does not match the tensors: the file is damaged.")
        for key in keys:
            raw = f.read(8)
            if len(raw) < 8:
                raise WeightsError(f"{what}: tensor data stops before storage {key} (the file is truncated).")
            numel = struct.unpack("<q", raw)[0]
            itemsize = declared[key] // numel if numel > 0 else 0
            if numel < 0 or (numel and numel * itemsize != declared[key]) or (not numel and declared[key]):
                raise WeightsError(f"{what}: storage {key} declares {numel} elements, its tensor record another.")
            _skip(f, declared[key], size, what)
