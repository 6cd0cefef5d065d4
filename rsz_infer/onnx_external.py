"""The external-data files an ONNX graph names, read from the protobuf wire format.

ONNX Runtime loads a graph's external data (tensors kept in files beside the .onnx) without saying which
files it opens, and the inference side has no `onnx` package, so the few messages that can hold a tensor are
walked here: a bundle checks every such file is inside it and listed with its sha256 before ONNX Runtime
sees the graph. Large fields (raw weights) are skipped, not copied: the file is memory-mapped.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from rsz_infer.errors import RszError

# onnx.proto field numbers: message -> {field: the message that field holds}, only the paths to a TensorProto
# (initializers, Constant-like attributes, sparse tensors, subgraphs of If/Loop/Scan, model-local functions)
_FIELDS = {
    "model": {7: "graph", 25: "function"},  # ModelProto.graph, .functions
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # GraphProto.node, .initializer, .sparse_initializer
    "function": {7: "node"},  # FunctionProto.node
    "node": {5: "attribute"},  # NodeProto.attribute
    # AttributeProto.t, .g, .tensors, .graphs, .sparse_tensor, .sparse_tensors
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto.values, .indices
    "tensor": {13: "entry"},  # TensorProto.external_data: StringStringEntryProto (key 1, value 2)
}


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, value start, value end or varint) of one message's fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed("a field runs past the end of its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:  # groups (3, 4) do not occur in onnx.proto
            raise _Malformed(f"unexpected wire type {wire}")
    if pos != end:
        raise _Malformed("a field runs past the end of its message")


def external_data_locations(path: Path) -> list[str]:
    """The `location` of every tensor of the graph at `path` whose data is in another file (sorted, unique).

    RszError when the file is not an ONNX protobuf.
    """
    locations: set[str] = set()
    with open(path, "rb") as f:
        if Path(path).stat().st_size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                stack = [("model", 0, len(buf))]  # no recursion: subgraphs nest as deep as a file says
                while stack:
                    kind, start, end = stack.pop()
                    if kind == "entry":
                        entry = {n: bytes(buf[a:b]) for n, w, a, b in _fields(buf, start, end) if w == 2}
                        if entry.get(1) == b"location":
                            locations.add(entry.get(2, b"").decode("utf-8"))
                        continue
                    for number, wire, a, b in _fields(buf, start, end):
                        if wire == 2 and number in _FIELDS[kind]:
                            stack.append((_FIELDS[kind][number], a, b))
            except (_Malformed, UnicodeDecodeError) as err:
                raise RszError(f"{path}: not a valid ONNX graph ({err})") from None
            finally:
                buf.release()
    return sorted(locations)
