"""Every constant and table of format_spec.md, one enum or dict per table.

The spec and this module are kept one-to-one: a reader written from the spec
alone uses exactly these numbers.
"""
from __future__ import annotations

import struct
from enum import Enum, IntEnum

# --- Preamble (spec §2) ----------------------------------------------------
MAGIC = b"\x89MBZ\r\n\x1a\n"
VERSION_MAJOR = 1
VERSION_MINOR = 2
# magic, major, minor, header codec, 3 reserved bytes, header length, header crc32
PREAMBLE = struct.Struct("<8sHHB3sII")
PREAMBLE_SIZE = PREAMBLE.size  # 24
assert PREAMBLE_SIZE == 24


class HeaderCodec(IntEnum):
    """How the header block is stored (spec table 1)."""
    NONE = 0
    ZSTD = 1


# --- Limits a reader enforces before allocating (spec §7) -------------------
MAX_HEADER_BYTES = 64 << 20          # decoded header block
MAX_EXPANSION = 1024                 # decoded bytes / stored bytes of one zstd block
EXPANSION_SLACK = 4096               # ... plus this many bytes
MAX_RANK = 16
MAX_WIDTH = 16                       # bit width of codes, indices, zero points
MAX_ALIGN = 4096
MAX_DIM_PRODUCT = 1 << 48            # product of a shape's nonzero sizes; also m, gs
MAX_HEADER_DEPTH = 64                # nesting of maps / arrays in the header (the header map is depth 1)
HEADER_OBJECTS_SLACK = 1 << 18       # msgpack objects in the header: at most this + file size // 2
ELEMENTS_PER_BYTE = 64               # sum of numel over the tensors: at most this * file size ...
ELEMENT_SLACK = 1 << 22              # ... + this many
ZSTD_MIN_WINDOW = 1 << 10            # a zstd frame's window: at most max(this, 2 * its decoded length)


def max_header_objects(file_size: int) -> int:
    """Most msgpack objects (every map, array, key and value) a header may hold (spec §7)."""
    return HEADER_OBJECTS_SLACK + file_size // 2


def max_elements(file_size: int) -> int:
    """Most elements (sum of numel) a file of this size may decode to (spec §7)."""
    return ELEMENTS_PER_BYTE * file_size + ELEMENT_SLACK


# --- Element types (spec table 2) -------------------------------------------
class DType(IntEnum):
    F32 = 0
    F16 = 1
    BF16 = 2
    F64 = 3
    I8 = 4
    U8 = 5
    I16 = 6
    I32 = 7
    I64 = 8
    BOOL = 9
    # format 1.1 (checkpoint inputs): every dtype torch.load(weights_only=True) can return
    QI8 = 10        # torch.qint8: quantized, AFFINE only (§5.3.1)
    QU8 = 11        # torch.quint8
    QI32 = 12       # torch.qint32
    F8E4M3FN = 13
    F8E5M2 = 14
    F8E4M3FNUZ = 15
    F8E5M2FNUZ = 16
    F8E8M0FNU = 17
    U16 = 18
    U32 = 19
    U64 = 20
    C32 = 21        # complex32 (two float16)
    C64 = 22        # complex64 (two float32)
    C128 = 23       # complex128 (two float64)


# dtype -> (torch dtype name, itemsize in bytes)
DTYPE_INFO = {
    DType.F32: ("float32", 4),
    DType.F16: ("float16", 2),
    DType.BF16: ("bfloat16", 2),
    DType.F64: ("float64", 8),
    DType.I8: ("int8", 1),
    DType.U8: ("uint8", 1),
    DType.I16: ("int16", 2),
    DType.I32: ("int32", 4),
    DType.I64: ("int64", 8),
    DType.BOOL: ("bool", 1),
    DType.QI8: ("qint8", 1),
    DType.QU8: ("quint8", 1),
    DType.QI32: ("qint32", 4),
    DType.F8E4M3FN: ("float8_e4m3fn", 1),
    DType.F8E5M2: ("float8_e5m2", 1),
    DType.F8E4M3FNUZ: ("float8_e4m3fnuz", 1),
    DType.F8E5M2FNUZ: ("float8_e5m2fnuz", 1),
    DType.F8E8M0FNU: ("float8_e8m0fnu", 1),
    DType.U16: ("uint16", 2),
    DType.U32: ("uint32", 4),
    DType.U64: ("uint64", 8),
    DType.C32: ("complex32", 4),
    DType.C64: ("complex64", 8),
    DType.C128: ("complex128", 16),
}
FLOAT_DTYPES = frozenset({DType.F32, DType.F16, DType.BF16, DType.F64})
# quantized dtypes (spec §5.3.1): the integer type of their codes (int_repr) and whether it is signed
QUANTIZED_DTYPES = {DType.QI8: ("int8", True), DType.QU8: ("uint8", False), DType.QI32: ("int32", True)}


# --- Tensor encodings (spec table 3) -----------------------------------------
class Encoding(IntEnum):
    RAW = 0        # little-endian bytes of the dtype
    AFFINE = 1     # value = float32(q - zero_point) * scale, cast to dtype
    CODEBOOK = 2   # value = codebook[q]


class Granularity(IntEnum):
    """Which elements share one scale / zero point (spec table 4)."""
    TENSOR = 0
    CHANNEL = 1    # one per index along params['ax']
    GROUP = 2      # one per params['gs'] consecutive elements (row-major)


class Sparsity(IntEnum):
    """Which elements have a stored code (spec table 5)."""
    DENSE = 0      # every element
    BITMAP = 1     # MASK section: one bit per element, 1 = stored
    DELTA = 2      # DELTAS section: gap-1 to the previous stored element


# Which sparse layouts each encoding may use (spec table 5): RAW takes DENSE or BITMAP (format 1.2)
ENCODING_SPARSITY = {
    Encoding.RAW: frozenset({Sparsity.DENSE, Sparsity.BITMAP}),
    Encoding.AFFINE: frozenset(Sparsity),
    Encoding.CODEBOOK: frozenset(Sparsity),
}


# --- Payload sections (spec table 6) ------------------------------------------
class Role(IntEnum):
    RAW = 0
    CODES = 1
    MASK = 2
    DELTAS = 3
    NEGZERO = 4
    SCALES = 5
    ZERO_POINTS = 6
    CODEBOOK = 7


class Filter(IntEnum):
    """Entropy stage of one section (spec table 7)."""
    NONE = 0
    ZSTD = 1
    SHUFFLE_ZSTD = 2  # byte-plane transpose with the role's element size, then zstd
    RANS = 3          # static-model, context-modelled, lane-interleaved rANS of the packed codes (§5.7)
    ARANS = 4         # adaptive binary context models over lane-interleaved rANS (§5.8); since version 1.2


# --- RANS filter (spec §5.7, table 13) -------------------------------------------
class RansAlphabet(IntEnum):
    """What one rANS symbol is (spec table 13)."""
    DIRECT = 0     # the w-bit code itself (w <= 8), 2^w symbols
    CLASSES = 1    # the bit length of the code's magnitude, w + 1 symbols; the lower bits raw


RANS_L = 1 << 23          # lane states live in [RANS_L, 256 * RANS_L)
RANS_STATE_BYTES = 4      # each lane's initial decoder state: u32
RANS_MAX_P = 12           # frequency tables sum to 2^P, 1 <= P <= 12
RANS_MAX_CTX = 4          # classes distinguished per neighbour (1 = neighbour unused)


# --- ARANS filter (spec §5.8, tables 16, 17) --------------------------------------
class AransKind(IntEnum):
    """What one ARANS element is (spec table 16)."""
    INT = 0        # a w-bit §5.1 code
    FLOAT32 = 1    # a float32 word: exponent, sign and the top w fraction bits coded


ARANS_P = 16              # decision probabilities are in units of 2^-16
ARANS_LIMIT = 1023        # a slot's decision counts are halved when their sum exceeds this
RANS_MAX_LANE = 16384     # symbols per RANS lane, S = ceil(n / K), at most this (bounds the decoder's steps)
ARANS_MAX_LANE = 16384    # elements per lane, S = ceil(n / K), at most this (bounds the decoder's steps)


# Element size SHUFFLE_ZSTD transposes by (spec §5.6): None = the tensor dtype's itemsize.
ROLE_STRIDE = {Role.RAW: None, Role.CODEBOOK: None, Role.SCALES: 4}


def role_stride(role: Role, itemsize: int) -> int:
    stride = ROLE_STRIDE.get(role, 1)
    return itemsize if stride is None else stride


# --- Accounting categories (spec table 8) -------------------------------------
class Category(str, Enum):
    FILE_HEADER = "file_header"
    TENSOR_RECORDS = "tensor_records"
    VALUES = "values"
    INDICES = "indices"
    SCALES = "scales"
    CODEBOOKS = "codebooks"
    RAW = "raw"
    PADDING = "padding"
    CHECKSUMS = "checksums"


ROLE_CATEGORY = {
    Role.RAW: Category.RAW,
    Role.CODES: Category.VALUES,
    Role.MASK: Category.INDICES,
    Role.DELTAS: Category.INDICES,
    Role.NEGZERO: Category.INDICES,
    Role.SCALES: Category.SCALES,
    Role.ZERO_POINTS: Category.SCALES,
    Role.CODEBOOK: Category.CODEBOOKS,
}

# Which element types each encoding may carry (spec table 3).
# Quantized dtypes (format 1.1) only with AFFINE (§5.3.1).
ENCODING_DTYPES = {
    Encoding.RAW: frozenset(DType) - set(QUANTIZED_DTYPES),
    Encoding.AFFINE: FLOAT_DTYPES | set(QUANTIZED_DTYPES),
    Encoding.CODEBOOK: frozenset(DType) - {DType.BOOL} - set(QUANTIZED_DTYPES),
}

# Which roles each encoding may / must carry (spec table 6).
ENCODING_ROLES = {
    Encoding.RAW: ({Role.RAW}, {Role.RAW, Role.MASK, Role.NEGZERO}),   # since 1.2: sp = BITMAP, nz (spec §5.2)
    Encoding.AFFINE: ({Role.CODES, Role.SCALES},
                      {Role.CODES, Role.SCALES, Role.ZERO_POINTS, Role.MASK, Role.DELTAS, Role.NEGZERO}),
    Encoding.CODEBOOK: ({Role.CODES, Role.CODEBOOK},
                        {Role.CODES, Role.CODEBOOK, Role.MASK, Role.DELTAS}),
}

# --- Header keys (spec §3) ---------------------------------------------------
H_FORMAT = "format"      # the string "mbz"
H_PAYLOAD = "payload"    # payload length in bytes
H_ALIGN = "align"        # section alignment (power of two)
H_CRCS = "crcs"          # payload offset of the checksum table
H_META = "meta"          # free-form metadata map
H_TENSORS = "tensors"    # list of tensor records

# tensor record keys
T_NAME, T_DTYPE, T_SHAPE, T_ENC, T_PARAMS, T_SECTIONS = "n", "t", "s", "e", "p", "x"
# section entry: [role, offset, stored length, filter, decoded length]

# params keys
P_WIDTH = "b"        # code width in bits
P_SIGNED = "sg"      # codes are two's complement
P_GRAN = "g"         # Granularity
P_AXIS = "ax"        # channel axis
P_GROUP = "gs"       # group size
P_ZPWIDTH = "zb"     # zero-point width (0: no ZERO_POINTS section, zero point 0)
P_SPARSE = "sp"      # Sparsity
P_IWIDTH = "iw"      # delta index width
P_COUNT = "m"        # number of stored codes
P_NEGZERO = "nz"     # a NEGZERO section is present
P_K = "k"            # codebook entries
# format 1.1: quantized dtypes (spec §5.3.1)
P_SCALE_BYTES = "sb"  # bytes per SCALES entry: 4 (float32, default) or 8 (float64, quantized dtypes only; 1.2: a
#                      quantized dtype's float64 scales that are all float32 values may be stored as 4)
P_ZPSIGNED = "zs"     # ZERO_POINTS are two's complement (quantized dtypes only)



# --- Checkpoint structure (spec §3.1, format 1.1) ----------------------------
H_TREE = "tree"      # optional: the checkpoint's structure, one node (table 14); absent = a flat state_dict
H_MAIN = "main"      # optional: key path from the tree's root to the state_dict mbz.load returns

MAX_TREE_DEPTH = 64  # nesting a reader follows


class Node(IntEnum):
    """Kinds of structure-tree node (spec table 14): each node is an array [kind, fields...]."""
    NONE = 0        # [0]
    BOOL = 1        # [1, bool]
    INT = 2         # [2, int]  (msgpack int: -2^63 .. 2^64-1)
    FLOAT = 3       # [3, float64]
    STR = 4         # [4, str]
    BYTES = 5       # [5, bin]
    LIST = 6        # [6, [node...]]
    TUPLE = 7       # [7, [node...]]
    DICT = 8        # [8, [[key node, value node]...]]
    ODICT = 9       # [9, items, metadata]: OrderedDict; items as DICT's or a RECORDS node; metadata
                    # (msgpack map or nil) is the state_dict's _metadata (module versions)
    TENSOR = 10     # [10, record name]: the tensor of that record (the same name twice = one shared tensor)
    PARAM = 11      # [11, tensor node, requires_grad]: a torch.nn.Parameter
    VIEW = 12       # [12, record name, offset, [shape], [stride]]: alias of a 1-D record's elements
    DTYPE = 13      # [13, torch dtype name]
    SIZE = 14       # [14, [int...]]: torch.Size
    DEVICE = 15     # [15, str]
    COMPLEX = 16    # [16, real, imag]
    SPARSE = 17     # [17, layout, [component nodes], [size], coalesced]: a sparse tensor (table 15)
    BIGINT = 18     # [18, decimal str]: an int outside msgpack's range
    RECORDS = 19    # [19, first record index, count, prefix]: items of the records first..first+count-1,
                    # keyed by their names less the prefix (as ODICT / DICT items)


# Sparse layouts of a SPARSE node (spec table 15): the component tensors, in order
SPARSE_LAYOUTS = {
    "sparse_coo": ("indices", "values"),
    "sparse_csr": ("crow_indices", "col_indices", "values"),
    "sparse_csc": ("ccol_indices", "row_indices", "values"),
    "sparse_bsr": ("crow_indices", "col_indices", "values"),
    "sparse_bsc": ("ccol_indices", "row_indices", "values"),
}

# metadata keys the writer records about its input (spec §3.2)
M_INPUT = "input"             # {'dtypes': {dtype: bytes}, 'bytes': total tensor bytes of the checkpoint}
M_PRUNE_FOLDED = "prune_folded"  # names stored as weight_orig * weight_mask (pruning re-parametrisation)
M_ZERO_SIGN = "zero_sign_dropped"  # {record name: count of -0.0 stored as +0.0}: not bit-exact there
M_KEY = "key"                 # the checkpoint entry packed (pack --key), the others left out
M_LOSSY = "lossy"             # the lossy settings of pack (--wbits ... or --step ...): tensors differ from the input by design
M_BN_AFFINE = "bn_affine"     # BatchNorm modules rewritten as their eval-mode affine (pack --bn-affine)


# Params keys by encoding (spec table 9): key -> (kind, lo, hi, when the key is required / allowed).
# kind "int" (integer lo..hi, hi None = the MAX_DIM_PRODUCT cap), "bool", or "enum" (lo is the enum class).
# when: "always", "optional" (with its default), or (key, value): required iff params[key] == value,
# forbidden otherwise.  A key of this table not listed for an encoding is forbidden for it; a key
# the table does not know (added by a later minor version) is ignored.
PARAM_RULES = {
    Encoding.RAW: {   # format 1.2: the BITMAP layout of RAW (spec §5.2); a 1.1 reader refuses these keys
        P_SPARSE: ("enum", Sparsity, None, "optional"),
        P_COUNT: ("int", 0, None, (P_SPARSE, Sparsity.BITMAP)),
        P_NEGZERO: ("bool", None, None, "optional"),   # only with sp = BITMAP and a FLOAT_DTYPES dtype
    },
    Encoding.AFFINE: {
        P_WIDTH: ("int", 1, MAX_WIDTH, "always"),
        P_SPARSE: ("enum", Sparsity, None, "always"),
        P_COUNT: ("int", 0, None, "always"),
        P_GRAN: ("enum", Granularity, None, "always"),
        P_AXIS: ("int", 0, "rank-1", (P_GRAN, Granularity.CHANNEL)),
        P_GROUP: ("int", 1, None, (P_GRAN, Granularity.GROUP)),
        P_IWIDTH: ("int", 1, MAX_WIDTH, (P_SPARSE, Sparsity.DELTA)),
        P_SIGNED: ("bool", None, None, "optional"),
        P_ZPWIDTH: ("int", 0, MAX_WIDTH, "optional"),
        P_NEGZERO: ("bool", None, None, "optional"),
        P_SCALE_BYTES: ("choice", (4, 8), None, "optional"),   # 8 only for a quantized dtype (§5.3.1)
        P_ZPSIGNED: ("bool", None, None, "optional"),
    },
    Encoding.CODEBOOK: {
        P_WIDTH: ("int", 1, MAX_WIDTH, "always"),
        P_SPARSE: ("enum", Sparsity, None, "always"),
        P_COUNT: ("int", 0, None, "always"),
        P_K: ("int", 1, "2^b", "always"),
        P_IWIDTH: ("int", 1, MAX_WIDTH, (P_SPARSE, Sparsity.DELTA)),
    },
}
PARAM_DEFAULTS = {P_SPARSE: int(Sparsity.DENSE), P_SIGNED: False, P_ZPWIDTH: 0, P_NEGZERO: False, P_SCALE_BYTES: 4, P_ZPSIGNED: False}
KNOWN_PARAMS = frozenset(k for rules in PARAM_RULES.values() for k in rules)

# Header keys (spec table 10): key -> required?  Unknown keys are ignored.
HEADER_KEYS = {H_FORMAT: True, H_PAYLOAD: True, H_ALIGN: True, H_CRCS: True, H_META: False, H_TENSORS: True,
               H_TREE: False, H_MAIN: False}
# Tensor record keys (spec table 11): key -> required?  ('p' may be left out for RAW.)
RECORD_KEYS = {T_NAME: True, T_DTYPE: True, T_SHAPE: True, T_ENC: True, T_PARAMS: False, T_SECTIONS: True}
