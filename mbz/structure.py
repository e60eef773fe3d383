"""A checkpoint's structure kept without pickle: the typed msgpack tree of spec §3.1 (table 14).

``flatten(obj)`` turns what ``torch.load(weights_only=True)`` returns (nested
dicts / OrderedDicts, lists, tuples, numbers, strings, dtypes, torch.Size,
Parameters, sparse and quantized tensors) into named tensor records plus one
tree node that refers to them by name; ``build(tree, get)`` does the reverse.
Tensors that share storage are stored once: the same view twice is one record
named twice (restored as one tensor), different views of one storage are VIEW
nodes of one record holding the storage's elements (restored as views of one
tensor).  A plain state_dict of tensors needs no tree at all (a 1.0 file).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import CheckpointError, FormatError
from .spec import MAX_TREE_DEPTH, SPARSE_LAYOUTS, Node

# keys under which a wrapped checkpoint holds its model's state_dict, in order of preference
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "module")
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1


def _plain_tensor(v) -> bool:
    """A tensor a RECORDS node can hold: torch.Tensor itself (no Parameter), strided or quantized."""
    return type(v) is torch.Tensor and v.layout == torch.strided


def is_state_dict(obj) -> bool:
    """A mapping of string keys to tensors only."""
    return isinstance(obj, Mapping) and all(isinstance(k, str) for k in obj) and \
        all(isinstance(v, torch.Tensor) for v in obj.values())


def main_path(obj) -> list:
    """Keys from the checkpoint's root to its model state_dict (WRAPPER_KEYS, as mbz.checkpoint reads it)."""
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in WRAPPER_KEYS:
            v = obj.get(key)
            if isinstance(v, nn.Module):
                return [key]
            if isinstance(v, Mapping):
                return [key] + main_path(v)
    return []


def check_materialized(obj) -> None:
    """Raise CheckpointError naming the key path of the first tensor on the 'meta' device in `obj` (a module,
    a state_dict, or any checkpoint structure): such a tensor has a shape and a dtype but no values, so
    nothing can be stored, compared or evaluated from it."""
    def visit(v, path, depth):
        if depth > MAX_TREE_DEPTH:
            return
        if isinstance(v, nn.Module):
            v = v.state_dict()
        if isinstance(v, torch.Tensor):
            if v.is_meta:
                raise CheckpointError(
                    f"{'/'.join(map(str, path)) or 'checkpoint'}: tensor {list(v.shape)} "
                    f"{str(v.dtype).replace('torch.', '')} is on the 'meta' device and holds no values; "
                    "expected real tensors (materialize the model first, e.g. to_empty(device='cpu') and "
                    "load_state_dict)")
        elif isinstance(v, Mapping):
            for k, x in v.items():
                visit(x, path + [k], depth + 1)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                visit(x, path + [i], depth + 1)
    visit(obj, [], 0)


def subtree(obj, path: list):
    for k in path:
        obj = obj[k]
    return obj.state_dict() if isinstance(obj, nn.Module) else obj


@dataclass
class Flat:
    """A checkpoint as records and a tree."""
    tensors: "OrderedDict[str, torch.Tensor]"   # record name -> tensor, in record order
    tree: list | None                           # None: the checkpoint is the flat state_dict `tensors`
    main: list                                  # key path of the model state_dict
    main_names: set = field(default_factory=set)  # records of the model state_dict
    shared: int = 0                             # tensors stored once for several leaves (aliases)


class _Flattener:
    def __init__(self, obj, main: list):
        self.main = main
        self.tensors: OrderedDict = OrderedDict()
        self.main_names: set = set()
        self.plan = self._alias_plan(obj)
        self.storage_name: dict = {}   # storage key -> record name (shared / view groups)
        self.shared = 0

    # -- aliasing ----------------------------------------------------------------
    @staticmethod
    def _storage_key(t):
        if t.layout != torch.strided or t.is_quantized or t.numel() == 0:
            return None
        st = t.untyped_storage()
        return (st.data_ptr(), st.nbytes()) if st.nbytes() else None

    @staticmethod
    def _view_id(t):
        return (t.dtype, t.storage_offset(), tuple(t.shape), tuple(t.stride()))

    def _alias_plan(self, obj) -> dict:
        """storage key -> 'shared' (one view, several leaves) or 'view' (several views of one dtype)."""
        groups: dict = {}

        def visit(v, depth):
            if depth > MAX_TREE_DEPTH:
                return
            if isinstance(v, nn.Module):
                v = v.state_dict()
            if isinstance(v, torch.Tensor):
                key = self._storage_key(v)
                if key is not None:
                    groups.setdefault(key, []).append(self._view_id(v))
            elif isinstance(v, Mapping):
                for x in v.values():
                    visit(x, depth + 1)
            elif isinstance(v, (list, tuple)):
                for x in v:
                    visit(x, depth + 1)
        visit(obj, 0)
        plan = {}
        for key, ids in groups.items():
            if len(ids) < 2:
                continue
            if len(set(ids)) == 1:
                plan[key] = "shared"
            elif len({i[0] for i in ids}) == 1 and key[1] % ids[0][0].itemsize == 0:
                plan[key] = "view"
            # views of one storage in several dtypes: stored as separate copies
        return plan

    # -- names -------------------------------------------------------------------
    def _name(self, path: list, suffix: str = "") -> str:
        rel = path[len(self.main):] if path[:len(self.main)] == self.main else path
        base = "/".join(str(k) for k in rel) + suffix or "tensor"
        name, i = base, 1
        while name in self.tensors:
            name, i = f"{base}#{i}", i + 1
        return name

    def _record(self, t: torch.Tensor, path: list, suffix: str = "") -> str:
        name = self._name(path, suffix)
        self.tensors[name] = t.detach()
        if path[:len(self.main)] == self.main:
            self.main_names.add(name)
        return name

    # -- nodes -------------------------------------------------------------------
    def tensor(self, t: torch.Tensor, path: list) -> list:
        if isinstance(t, nn.Parameter):
            return [int(Node.PARAM), self.tensor(t.data, path), bool(t.requires_grad)]
        t = t.detach()
        if t.layout != torch.strided:
            layout = str(t.layout).replace("torch.", "")
            if layout not in SPARSE_LAYOUTS:
                raise CheckpointError(f"{'/'.join(map(str, path))}: tensor layout {t.layout} is not stored")
            from .codecs.raw import sparse_parts
            parts = [self.tensor(x, path + [part]) for x, part in zip(sparse_parts(t), SPARSE_LAYOUTS[layout])]
            coalesced = bool(t.is_coalesced()) if layout == "sparse_coo" else None
            return [int(Node.SPARSE), layout, parts, list(t.shape), coalesced]
        key = self._storage_key(t)
        kind = self.plan.get(key)
        if kind is None:
            return [int(Node.TENSOR), self._record(t, path)]
        if kind == "shared":
            if key in self.storage_name:
                self.shared += 1
                return [int(Node.TENSOR), self.storage_name[key]]
            self.storage_name[key] = name = self._record(t, path)
            return [int(Node.TENSOR), name]
        if key not in self.storage_name:
            n = key[1] // t.element_size()
            self.storage_name[key] = self._record(t.as_strided((n,), (1,), 0), path, "@storage")
        else:
            self.shared += 1
        return [int(Node.VIEW), self.storage_name[key], int(t.storage_offset()), list(t.shape), list(t.stride())]

    def items(self, d: Mapping, path: list, depth: int) -> list:
        """DICT / ODICT items: a RECORDS node when every value is a plain unshared tensor, else pairs."""
        if d and all(isinstance(k, str) for k in d) and all(
                _plain_tensor(v) and self.plan.get(self._storage_key(v)) is None for v in d.values()):
            rel = path[len(self.main):] if path[:len(self.main)] == self.main else path
            prefix = "".join(f"{k}/" for k in rel)
            if not any(prefix + k in self.tensors for k in d):
                first = len(self.tensors)
                for k, v in d.items():
                    self.tensors[prefix + k] = v.detach()
                    if path[:len(self.main)] == self.main:
                        self.main_names.add(prefix + k)
                return [int(Node.RECORDS), first, len(d), prefix]
        return [[self.node(k, path + ["<key>"], depth + 1), self.node(v, path + [k], depth + 1)]
                for k, v in d.items()]

    def node(self, v, path: list, depth: int = 0) -> list:
        if depth > MAX_TREE_DEPTH:
            raise CheckpointError(f"{'/'.join(map(str, path))}: nested deeper than {MAX_TREE_DEPTH} levels")
        if v is None:
            return [int(Node.NONE)]
        if isinstance(v, bool):
            return [int(Node.BOOL), v]
        if isinstance(v, int):
            return [int(Node.INT), int(v)] if _INT_MIN <= v <= _INT_MAX else [int(Node.BIGINT), str(int(v))]
        if isinstance(v, float):
            return [int(Node.FLOAT), float(v)]
        if isinstance(v, complex):
            return [int(Node.COMPLEX), v.real, v.imag]
        if isinstance(v, str):
            return [int(Node.STR), v]
        if isinstance(v, (bytes, bytearray)):
            return [int(Node.BYTES), bytes(v)]
        if isinstance(v, torch.dtype):
            return [int(Node.DTYPE), str(v).replace("torch.", "")]
        if isinstance(v, torch.Size):
            return [int(Node.SIZE), [int(x) for x in v]]
        if isinstance(v, torch.device):
            return [int(Node.DEVICE), str(v)]
        if isinstance(v, nn.Module):
            return self.node(v.state_dict(), path, depth)
        if isinstance(v, torch.Tensor):
            return self.tensor(v, path)
        if type(v) in (dict, OrderedDict):
            if type(v) is OrderedDict:
                meta = getattr(v, "_metadata", None)
                keep = meta is not None and not all(_plain_tensor(x) and not x.is_quantized for x in v.values())
                return [int(Node.ODICT), self.items(v, path, depth),
                        self.node(dict(meta), path + ["_metadata"], depth + 1) if keep else [int(Node.NONE)]]
            return [int(Node.DICT), self.items(v, path, depth)]
        if type(v) is tuple:
            return [int(Node.TUPLE), [self.node(x, path + [i], depth + 1) for i, x in enumerate(v)]]
        if type(v) is list:
            return [int(Node.LIST), [self.node(x, path + [i], depth + 1) for i, x in enumerate(v)]]
        raise CheckpointError(f"{'/'.join(map(str, path)) or 'checkpoint'}: a {type(v).__name__} value "
                              "cannot be stored (numbers, strings, dtypes, containers and tensors can)")


def flatten(obj) -> Flat:
    """Records and tree of a checkpoint; a plain state_dict of unshared tensors gives tree None.

    Raises CheckpointError naming the key path of a value that cannot be stored."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    main = main_path(obj)
    f = _Flattener(obj, main)
    if is_state_dict(obj) and all(_plain_tensor(v) and not v.is_quantized for v in obj.values()) and not f.plan:
        for k, v in obj.items():
            f.tensors[k] = v.detach()
        return Flat(f.tensors, None, [], set(f.tensors))
    tree = f.node(obj, [])
    return Flat(f.tensors, tree, main, f.main_names, f.shared)


# --------------------------------------------------------------------------- reading
def _fail(path, what) -> FormatError:
    return FormatError(f"structure tree at {path or 'root'}: {what}")


def _kind(node, path):
    if not isinstance(node, list) or not node or type(node[0]) is not int:
        raise _fail(path, f"a node must be an array [kind, ...], got {str(node)[:60]}")
    try:
        return Node(node[0])
    except ValueError:
        raise _fail(path, f"unknown node kind {node[0]} (known: 0..{max(Node)})") from None


def _records_node(items, path, n_records: int) -> tuple[int, int, str]:
    """(first, count, prefix) of a RECORDS node (spec table of node kinds); FormatError if malformed or out of range."""
    if _kind(items, path) != Node.RECORDS:
        raise _fail(path, "dict items must be pairs or a RECORDS node")
    _arity(items, 4, path)
    first, count, prefix = items[1], items[2], items[3]
    if type(first) is not int or type(count) is not int or first < 0 or count < 0 \
            or first + count > n_records or not isinstance(prefix, str):
        raise _fail(path, f"RECORDS {first}..+{count} outside the {n_records} records")
    return first, count, prefix


def _arity(node, n, path):
    if len(node) != n:
        raise _fail(path, f"{Node(node[0]).name} node needs {n - 1} fields, got {len(node) - 1}")


def _ints(v, path, what):
    if not isinstance(v, list) or not all(type(x) is int and x >= 0 for x in v):
        raise _fail(path, f"{what} must be a list of non-negative integers")
    return v


class Builder:
    """Rebuilds objects from tree nodes; `get(name)` returns the decoded tensor of a record."""

    def __init__(self, get, names: list):
        self.get, self.names = get, names

    def _tensor(self, name, path):
        if not isinstance(name, str) or name not in self.names_set:
            raise _fail(path, f"refers to record {name!r}, which the file does not hold")
        return self.get(name)

    @property
    def names_set(self):
        if not hasattr(self, "_names_set"):
            self._names_set = set(self.names)
        return self._names_set

    def items(self, items, path, depth) -> list:
        if isinstance(items, list) and items and type(items[0]) is int:  # a RECORDS node
            first, count, prefix = _records_node(items, path, len(self.names))
            out = []
            for name in self.names[first:first + count]:
                if not name.startswith(prefix):
                    raise _fail(path, f"record {name!r} does not start with the prefix {prefix!r}")
                out.append((name[len(prefix):], self.get(name)))
            return out
        if not isinstance(items, list):
            raise _fail(path, "dict items must be a list")
        out = []
        for i, pair in enumerate(items):
            if not isinstance(pair, list) or len(pair) != 2:
                raise _fail(path, f"item #{i} must be a [key, value] pair")
            k = self.build(pair[0], f"{path}/<key {i}>", depth + 1)
            try:
                hash(k)
            except TypeError:
                raise _fail(path, f"key #{i} is a {type(k).__name__}, which cannot be a dict key") from None
            out.append((k, self.build(pair[1], f"{path}/{k}", depth + 1)))
        return out

    def build(self, node, path: str = "", depth: int = 0):
        if depth > MAX_TREE_DEPTH:
            raise _fail(path, f"nested deeper than {MAX_TREE_DEPTH} levels")
        kind = _kind(node, path)
        if kind == Node.NONE:
            return None
        if kind in (Node.BOOL, Node.INT, Node.FLOAT, Node.STR, Node.BYTES):
            _arity(node, 2, path)
            want = {Node.BOOL: bool, Node.INT: int, Node.FLOAT: float, Node.STR: str, Node.BYTES: bytes}[kind]
            if type(node[1]) is not want:
                raise _fail(path, f"{kind.name} node holds a {type(node[1]).__name__}")
            return node[1]
        if kind == Node.BIGINT:
            _arity(node, 2, path)
            try:
                return int(node[1])
            except (TypeError, ValueError):
                raise _fail(path, "BIGINT must hold a decimal string") from None
        if kind == Node.COMPLEX:
            _arity(node, 3, path)
            if not all(type(x) is float for x in node[1:]):
                raise _fail(path, "COMPLEX needs two floats")
            return complex(node[1], node[2])
        if kind in (Node.LIST, Node.TUPLE):
            _arity(node, 2, path)
            if not isinstance(node[1], list):
                raise _fail(path, f"{kind.name} needs a list of nodes")
            out = [self.build(x, f"{path}/{i}", depth + 1) for i, x in enumerate(node[1])]
            return out if kind == Node.LIST else tuple(out)
        if kind == Node.DICT:
            _arity(node, 2, path)
            return dict(self.items(node[1], path, depth))
        if kind == Node.ODICT:
            _arity(node, 3, path)
            d = OrderedDict(self.items(node[1], path, depth))
            meta = self.build(node[2], f"{path}/_metadata", depth + 1)
            if meta is not None:
                if not isinstance(meta, dict):
                    raise _fail(path, "_metadata must be a dict")
                d._metadata = OrderedDict(meta)
            return d
        if kind == Node.TENSOR:
            _arity(node, 2, path)
            return self._tensor(node[1], path)
        if kind == Node.PARAM:
            _arity(node, 3, path)
            t = self.build(node[1], path, depth + 1)
            if not isinstance(t, torch.Tensor) or type(node[2]) is not bool:
                raise _fail(path, "PARAM needs a tensor node and a boolean")
            try:
                return nn.Parameter(t, requires_grad=node[2])
            except RuntimeError as e:
                raise _fail(path, f"not a Parameter: {str(e).splitlines()[0]}") from None
        if kind == Node.VIEW:
            _arity(node, 5, path)
            base = self._tensor(node[1], path)
            off = node[2]
            shape, stride = _ints(node[3], path, "VIEW shape"), _ints(node[4], path, "VIEW stride")
            if type(off) is not int or off < 0 or len(shape) != len(stride) or base.dim() != 1 or base.is_quantized:
                raise _fail(path, "VIEW needs a 1-D unquantized record, an offset >= 0 and a stride per dimension")
            if all(shape):
                last = off + sum((s - 1) * st for s, st in zip(shape, stride))
                if last >= base.numel():
                    raise _fail(path, f"VIEW reaches element {last} of a record of {base.numel()}")
            try:
                return base.as_strided(shape, stride, off)
            except RuntimeError as e:
                raise _fail(path, f"VIEW not possible: {str(e).splitlines()[0][:200]}") from None
        if kind == Node.DTYPE:
            _arity(node, 2, path)
            d = getattr(torch, node[1], None) if isinstance(node[1], str) else None
            if not isinstance(d, torch.dtype):
                raise _fail(path, f"unknown torch dtype {node[1]!r}")
            return d
        if kind == Node.SIZE:
            _arity(node, 2, path)
            return torch.Size(_ints(node[1], path, "SIZE"))
        if kind == Node.DEVICE:
            _arity(node, 2, path)
            try:
                return torch.device(node[1])
            except (RuntimeError, TypeError):
                raise _fail(path, f"not a device: {node[1]!r}") from None
        if kind == Node.SPARSE:
            return self._sparse(node, path, depth)
        raise _fail(path, f"{kind.name} node out of place")

    def _sparse(self, node, path, depth):
        _arity(node, 5, path)
        layout, parts, size, coalesced = node[1], node[2], node[3], node[4]
        if layout not in SPARSE_LAYOUTS or not isinstance(parts, list) or len(parts) != len(SPARSE_LAYOUTS[layout]):
            raise _fail(path, f"SPARSE layout {layout!r} with {len(parts) if isinstance(parts, list) else '?'} parts")
        ts = [self.build(x, f"{path}/{n}", depth + 1) for x, n in zip(parts, SPARSE_LAYOUTS[layout])]
        size = _ints(size, path, "SPARSE size")
        try:
            if layout == "sparse_coo":
                return torch.sparse_coo_tensor(ts[0], ts[1], size, is_coalesced=bool(coalesced), check_invariants=True)
            make = {"sparse_csr": torch.sparse_csr_tensor, "sparse_csc": torch.sparse_csc_tensor,
                    "sparse_bsr": torch.sparse_bsr_tensor, "sparse_bsc": torch.sparse_bsc_tensor}[layout]
            return make(ts[0], ts[1], ts[2], size, check_invariants=True)
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            raise _fail(path, f"not a valid {layout} tensor: {str(e).splitlines()[0][:200]}") from None


_KEY_KINDS = frozenset({Node.NONE, Node.BOOL, Node.INT, Node.FLOAT, Node.STR, Node.BYTES, Node.TUPLE, Node.DTYPE,
                        Node.SIZE, Node.DEVICE, Node.COMPLEX, Node.BIGINT})
_TENSOR_KINDS = frozenset({Node.TENSOR, Node.VIEW, Node.SPARSE})
_SCALARS = {Node.BOOL: bool, Node.INT: int, Node.FLOAT: float, Node.STR: str, Node.BYTES: bytes}


def check_tree(tree, main: list, records: list) -> None:
    """Every structural rule of spec §3.1 checked on open, nothing decoded: node kinds, arity and field
    types (table 14), record references, RECORDS ranges and prefixes, VIEW nodes within a 1-D record of
    an unquantized dtype, SPARSE layouts and component counts (table 15), dict keys, and the 'main'
    path.  `records`: the file's records (name, dtype, shape).  Raises FormatError naming the node's
    key path; what depends on the tensors' values (sparse index invariants) is checked on decode."""
    from .spec import QUANTIZED_DTYPES
    names = [r.name for r in records]
    by_name = {r.name: r for r in records}
    _Checker(names, by_name, QUANTIZED_DTYPES).node(tree, "", 0)
    find(tree, main, names)


class _Checker:
    def __init__(self, names, by_name, quantized):
        self.names, self.by_name, self.quantized = names, by_name, quantized

    def record(self, name, path):
        if not isinstance(name, str) or name not in self.by_name:
            raise _fail(path, f"refers to record {name!r}, which the file does not hold")
        return self.by_name[name]

    def items(self, items, path, depth):
        if isinstance(items, list) and items and type(items[0]) is int:  # a RECORDS node
            first, count, prefix = _records_node(items, path, len(self.names))
            for name in self.names[first:first + count]:
                if not name.startswith(prefix):
                    raise _fail(path, f"record {name!r} does not start with the prefix {prefix!r}")
            return
        if not isinstance(items, list):
            raise _fail(path, "dict items must be a list")
        for i, pair in enumerate(items):
            if not isinstance(pair, list) or len(pair) != 2:
                raise _fail(path, f"item #{i} must be a [key, value] pair")
            kind = self.node(pair[0], f"{path}/<key {i}>", depth + 1)
            if kind not in _KEY_KINDS or kind == Node.TUPLE and not self.hashable(pair[0], depth + 1):
                raise _fail(path, f"key #{i} is a {kind.name} node, which cannot be a dict key")
            self.node(pair[1], f"{path}/<value {i}>", depth + 1)

    def hashable(self, node, depth) -> bool:
        if depth > MAX_TREE_DEPTH:
            return False
        kind = Node(node[0])
        return kind in _KEY_KINDS and (kind != Node.TUPLE or all(self.hashable(x, depth + 1) for x in node[1]))

    def node(self, node, path: str, depth: int) -> Node:
        if depth > MAX_TREE_DEPTH:
            raise _fail(path, f"nested deeper than {MAX_TREE_DEPTH} levels")
        kind = _kind(node, path)
        if kind == Node.NONE:
            _arity(node, 1, path)
        elif kind in _SCALARS:
            _arity(node, 2, path)
            if type(node[1]) is not _SCALARS[kind]:
                raise _fail(path, f"{kind.name} node holds a {type(node[1]).__name__}")
        elif kind == Node.BIGINT:
            _arity(node, 2, path)
            if not isinstance(node[1], str) or not node[1].lstrip("-").isdigit() or len(node[1]) > 4000:
                raise _fail(path, "BIGINT must hold a decimal string")
        elif kind == Node.COMPLEX:
            _arity(node, 3, path)
            if not all(type(x) is float for x in node[1:]):
                raise _fail(path, "COMPLEX needs two floats")
        elif kind in (Node.LIST, Node.TUPLE):
            _arity(node, 2, path)
            if not isinstance(node[1], list):
                raise _fail(path, f"{kind.name} needs a list of nodes")
            for i, x in enumerate(node[1]):
                self.node(x, f"{path}/{i}", depth + 1)
        elif kind == Node.DICT:
            _arity(node, 2, path)
            self.items(node[1], path, depth)
        elif kind == Node.ODICT:
            _arity(node, 3, path)
            self.items(node[1], path, depth)
            if self.node(node[2], f"{path}/_metadata", depth + 1) not in (Node.NONE, Node.DICT):
                raise _fail(path, "_metadata must be a dict")
        elif kind == Node.TENSOR:
            _arity(node, 2, path)
            self.record(node[1], path)
        elif kind == Node.PARAM:
            _arity(node, 3, path)
            if self.node(node[1], path, depth + 1) not in _TENSOR_KINDS or type(node[2]) is not bool:
                raise _fail(path, "PARAM needs a tensor node and a boolean")
        elif kind == Node.VIEW:
            _arity(node, 5, path)
            base = self.record(node[1], path)
            off = node[2]
            shape, stride = _ints(node[3], path, "VIEW shape"), _ints(node[4], path, "VIEW stride")
            if type(off) is not int or off < 0 or len(shape) != len(stride) or len(base.shape) != 1 \
                    or base.dtype in self.quantized:
                raise _fail(path, "VIEW needs a 1-D unquantized record, an offset >= 0 and a stride per dimension")
            if all(shape):
                last = off + sum((s - 1) * st for s, st in zip(shape, stride))
                if last >= base.shape[0]:
                    raise _fail(path, f"VIEW reaches element {last} of a record of {base.shape[0]}")
        elif kind == Node.DTYPE:
            _arity(node, 2, path)
            if not isinstance(node[1], str) or not isinstance(getattr(torch, node[1], None), torch.dtype):
                raise _fail(path, f"unknown torch dtype {node[1]!r}")
        elif kind == Node.SIZE:
            _arity(node, 2, path)
            _ints(node[1], path, "SIZE")
        elif kind == Node.DEVICE:
            _arity(node, 2, path)
            try:
                torch.device(node[1])
            except (RuntimeError, TypeError):
                raise _fail(path, f"not a device: {node[1]!r}") from None
        elif kind == Node.SPARSE:
            _arity(node, 5, path)
            layout, parts = node[1], node[2]
            if layout not in SPARSE_LAYOUTS or not isinstance(parts, list) \
                    or len(parts) != len(SPARSE_LAYOUTS[layout]):
                raise _fail(path, f"SPARSE layout {layout!r} with "
                                  f"{len(parts) if isinstance(parts, list) else '?'} parts")
            for x, n in zip(parts, SPARSE_LAYOUTS[layout]):
                if self.node(x, f"{path}/{n}", depth + 1) not in (Node.TENSOR, Node.VIEW):
                    raise _fail(path, f"SPARSE component {n} must be a tensor node")
            _ints(node[3], path, "SPARSE size")
        else:
            raise _fail(path, f"{kind.name} node out of place")
        return kind


def find(tree, path: list, names: list):
    """The node at key `path` (each step a DICT / ODICT key), without building anything else."""
    node = tree
    for step, key in enumerate(path):
        where = "/".join(map(str, path[:step]))
        kind = _kind(node, where)
        if kind not in (Node.DICT, Node.ODICT):
            raise _fail(where, f"'main' steps into a {kind.name} node")
        items = node[1]
        if isinstance(items, list) and items and type(items[0]) is int:
            raise _fail(where, "'main' steps into a RECORDS node")
        for pair in items if isinstance(items, list) else []:
            if isinstance(pair, list) and len(pair) == 2 and pair[0] in ([int(Node.STR), key], [int(Node.INT), key]):
                node = pair[1]
                break
        else:
            raise _fail(where, f"'main' key {key!r} not found")
    return node


def referenced(node, names: list, out: set, depth: int = 0) -> set:
    """Record names a node refers to (to decode them together before building)."""
    if depth > MAX_TREE_DEPTH or not isinstance(node, list) or not node:
        return out
    kind = node[0]
    if kind in (Node.TENSOR, Node.VIEW) and len(node) > 1 and isinstance(node[1], str):
        out.add(node[1])
    elif kind == Node.RECORDS and len(node) == 4 and type(node[1]) is int and type(node[2]) is int:
        out.update(names[max(0, node[1]):max(0, node[1] + node[2])])
    else:
        for x in node[1:]:
            if isinstance(x, list):
                referenced(x, names, out, depth + 1)
    return out
