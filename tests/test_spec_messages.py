"""Every error message the reference reader raises is a rule format_spec.md states.

The raise sites are found in the source (ast); each message template maps to the
section of format_spec.md that states its rule and a phrase of that section.  A new
raise site without an entry, an entry without a raise site, or a phrase the section
no longer holds fails the test.
"""
import ast
import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")
READER_FILES = ["mbz/container.py", "mbz/headerscan.py", "mbz/decoder.py", "mbz/reader.py", "mbz/structure.py"] + \
    ["mbz/codecs/" + f for f in sorted(os.listdir(os.path.join(ROOT, "mbz", "codecs"))) if f.endswith(".py")]
ERRORS = {"FormatError", "TruncatedError", "VersionError", "ChecksumError", "LimitError", "MbzError", "_fail"}

# message template (f-string fields as {}) -> (spec section, a phrase of that section stating the rule)
MESSAGES = {
    # §5.7 RANS filter (its own section rules)
    "rans section of {} bytes claims {} decoded bytes (limit {})": ("7", "`decoded_length ≤ 1024 × stored_length + 4096`"),
    "rans: varint {} longer than 8 bytes": ("5.7", "at most 8 bytes"),
    "rans: raw-bit stream is {} bytes, the decoded classes need {}": ("5.7", "raw bits of the wrong"),
    "rans: padding bits of the raw-bit stream must be zero": ("5.7", "its unused bits are zero"),
    "rans: truncated header reading {}": ("5.7", "Layout"),
    "rans: frequency tables end early": ("5.7", "tables that run"),
    "rans: section of {} bytes is shorter than its 4-byte header": ("5.7", "Layout"),
    "rans: unknown mode byte {}": ("5.7", "an unknown mode"),
    "rans: code width {} not allowed for alphabet {}": ("5.7", "DIRECT: 1..8"),
    "rans: table precision {} outside 1..{}": ("5.7", "1 ≤ P ≤ 12"),
    "rans: context byte {} outside 1..{} per neighbour": ("5.7", "each 1..4"),
    "rans: {} codes of {} bits pack to {} bytes, section declares {}": ("5.7", "must equal the section's decoded length"),
    "rans: {} lanes for {} symbols (need 1..n, or 0 for none)": ("5.7", "1 ≤ K ≤ n"),
    "rans: {} symbols per lane exceed {}": ("5.7", "`ceil(n / K) ≤ 16384` symbols per lane"),
    "rans: upper-neighbour context with row length {} for {} symbols": ("5.7", "`0 < R < n` when `TU > 1`"),
    "rans: row length {} exceeds the {} symbols": ("5.7", "`R ≤ n`"),
    "rans: frequency tables run past the section end": ("5.7", "tables that run"),
    "rans: frequency tables leave unused non-zero bits": ("5.7", "unread bits of that byte are zero"),
    "rans: {} lane states and a {}-byte stream run past the section end (truncated)": ("5.7", "ends early"),
    "rans: lane state out of range [{}, {})": ("5.7", "states outside"),
    "rans: {} bytes after the lane stream": ("5.7", "DIRECT sections"),
    "rans: a symbol was decoded from an absent frequency table": ("5.7", "a symbol drawn from an absent table"),
    "rans: decoded codes outside the {}-bit {} range": ("5.7", "codes outside the `w`-bit range"),
    "rans: frequency code longer than {} bits": ("5.7", "at most `P + 1`"),
    "rans: frequency table {} sums past {}": ("5.7", "sum past `M`"),
    # §5.8 ARANS filter
    "arans section of {} bytes claims {} decoded bytes (limit {})": ("7", "`decoded_length ≤ 1024 × stored_length + 4096`"),
    "arans: section of {} bytes is shorter than its 2-byte header": ("5.8", "Layout"),
    "arans: unknown mode byte {}": ("5.8", "an unknown mode or kind"),
    "arans: code width {} outside 1..16": ("5.8", "INT: code width, 1..16"),
    "arans: {} fraction bits, at most 23": ("5.8", "fraction bits coded, 0..23"),
    "arans: {} elements need {} bytes, section declares {}": ("5.8", "must equal the section's decoded length"),
    "arans: {} lanes for {} elements (need 1..n, or 0 for none)": ("5.8", "1 ≤ K ≤ n"),
    "arans: {} elements per lane exceed {}": ("5.8", "more than 16384\nelements per lane"),
    "arans: row length {} with {} elements (need 0, or below n for INT)": ("5.8", "`0 < R < n` (INT only)"),
    "arans: {} lane states run past the section end (truncated)": ("5.8", "ends early"),
    "arans: lane state out of range [{}, {})": ("5.8", "states outside"),
    "arans: byte stream of {} bytes ends early (truncated lane data){}": ("5.8", "a lane stream that ends early"),
    "arans: {} bytes of the lane stream left unread{}": ("5.8", "is not consumed exactly"),
    "arans: final lane states differ from {}: the stream is corrupt{}": ("5.8", "final\nstates other"),
    "arans: decoded codes outside the {}-bit {} range{}": ("5.8", "codes outside the `w`-bit range"),
    # §2 preamble
    "file is {} bytes; the preamble alone is {}": ("7", "size ≥ 24"),
    "not an .mbz file: bad magic at offset 0 (expected {})": ("2", "magic"),
    "not an .mbz file: bad magic {} at offset 0 (expected {})": ("2", "magic"),
    "file format version {}.{} is newer than this reader ({}.{}); upgrade mbz to read it":
        ("2", "refuses a file whose major version is greater"),
    "file format version {}.{} is not a released version": ("2", "and a major version 0"),
    "preamble offset 13: reserved bytes must be zero": ("2", "must be zero"),
    "header claims {} bytes at offset {}, file has only {} after the preamble": ("7", "`24 + H ≤ file size`"),
    "header checksum mismatch (offset {}, {} bytes): file is corrupt": ("2", "CRC-32 (zlib / ISO-HDLC polynomial)"),
    "unknown {} value {} (known: {})": ("2", "refuses that file with a message naming the"),
    "expected an integer in {}, got {}": ("3", "int in 0..2^48"),
    # §3 header and its msgpack
    "header is zstd-compressed; install 'zstandard' to read it": ("2", "one zstd frame holding the msgpack bytes"),
    "header of {} bytes exceeds {}": ("7", "decoded header ≤ 64 MiB"),
    "header is not valid msgpack: it ends at byte {} inside an object": ("3", "exactly one msgpack object"),
    "header is not valid msgpack: it ends at byte {} inside a length field": ("3", "exactly one msgpack object"),
    "header is not valid msgpack: an object runs past its end ({} bytes)": ("3", "exactly one msgpack object"),
    "header is not valid msgpack: unused byte 0x{} at byte {}": ("3", "may use only these msgpack types"),
    "header is not valid msgpack ({}{})": ("3", "str (valid UTF-8)"),
    "{} bytes follow the header's msgpack map (at byte {})": ("3", "with nothing after it"),
    "header holds more than {} msgpack objects (limit for this file size)": ("3", "msgpack objects, counting every map"),
    "header container at byte {} claims {} items, limit {} objects for this file size":
        ("3", "msgpack objects, counting every map"),
    "header map key at byte {} is not a string": ("3", "Every map key anywhere in the header"),
    "header nests maps / arrays deeper than {} levels (byte {})": ("3", "nest at most 64 levels deep"),
    "header holds a msgpack ext type at byte {}; only nil, bool, int, float, str, bin, array and map are allowed":
        ("3", "ext types are refused"),
    "header map holds the key {} twice": ("3", "no map holds the same key twice"),
    "header must be a map, got {}": ("3", "a map, with nothing after it"),
    "header lacks the required key '{}'": ("3", "Table 10 — header keys"),
    "header key '{}' must be 'mbz', got {}": ("3", 'always `"mbz"`'),
    "header '{}' must be a power of two, got {}": ("3", "a power of two in 1..4096"),
    "header '{}' must be a map, got {}": ("3", "free-form metadata"),
    "header '{}' must be a list, got {}": ("3", "tensor records, in payload order"),
    "{}: record must be a map, got {}": ("3", "A **tensor record** is a map"),
    "{}: name must be a non-empty string, got {}": ("3", "tensor name, non-empty, unique in the file"),
    "tensor '{}' appears twice": ("3", "tensor name, non-empty, unique in the file"),
    "{}: record lacks the required key '{}'": ("3", "table 11 (`RECORD_KEYS`)"),
    "{}: shape must be a list of at most {} sizes, got {}": ("3", "at most 16 sizes"),
    "{}: shape {} has a product of nonzero sizes {}, limit {}": ("3", "the product of its nonzero sizes is at most 2^48"),
    "{}: params must be a map, got {}": ("3", "encoding parameters: table 9"),
    "{}: sections must be a list, got {}": ("3", "sections: each an array of five ints"),
    "{}: expected [role, offset, stored, filter, decoded], got {}": ("3", "sections: each an array of five ints"),
    "{}: role {} appears twice": ("3", "A role appears at most once per record"),
    "header '{}' must be a list of keys (strings or integers), got {}": ("3", "the key path in `tree` to the model state_dict"),
    # §3.1 structure tree (checked on open by structure.check_tree; the builder repeats the checks)
    "structure tree at {}: {}": ("3.1", "naming the node's key"),
    "a node must be an array [kind, ...], got {}": ("3.1", "a node is a msgpack array `[kind, fields...]`"),
    "unknown node kind {} (known: 0..{})": ("3.1", "an unknown kind, a wrong field count or type"),
    "{} node needs {} fields, got {}": ("3.1", "an unknown kind, a wrong field count or type"),
    "{} node holds a {}": ("3.1", "an unknown kind, a wrong field count or type"),
    "COMPLEX needs two floats": ("3.1", "| 16 | COMPLEX | float64, float64 | complex |"),
    "BIGINT must hold a decimal string": ("3.1", "| 18 | BIGINT | decimal str |"),
    "{} needs a list of nodes": ("3.1", "| 6 | LIST | array of nodes | list |"),
    "{} must be a list of non-negative integers": ("3.1", "strides ≥ 0"),
    "{} node out of place": ("3.1", "(as DICT / ODICT items only)"),
    "refers to record {}, which the file does not hold": ("3.1", "a name no record has"),
    "dict items must be a list": ("3.1", "`items` is either an array of `[key node, value node]` pairs"),
    "dict items must be pairs or a RECORDS node": ("3.1", "`items` is either an array of `[key node, value node]` pairs"),
    "item #{} must be a [key, value] pair": ("3.1", "`items` is either an array of `[key node, value node]` pairs"),
    "key #{} is a {}, which cannot be a dict key": ("3.1", "rebuild to hashable values"),
    "key #{} is a {} node, which cannot be a dict key": ("3.1", "a dict key of an unhashable kind"),
    "RECORDS {}..+{} outside the {} records": ("3.1", "a RECORDS range outside the records"),
    "record {} does not start with the prefix {}": ("3.1", "or a name without its"),
    "nested deeper than {} levels": ("3.1", "most 64 levels (`MAX_TREE_DEPTH`)"),
    "_metadata must be a dict": ("3.1", "a DICT metadata node becomes its `_metadata`"),
    "PARAM needs a tensor node and a boolean": ("3.1", "a PARAM without a tensor node"),
    "not a Parameter: {}": ("3.1", "`torch.nn.Parameter(tensor, requires_grad)`"),
    "VIEW needs a 1-D unquantized record, an offset >= 0 and a stride per dimension":
        ("3.1", "that is not 1-D or has a quantized dtype"),
    "VIEW reaches element {} of a record of {}": ("3.1", "A VIEW's elements must lie inside its"),
    "VIEW not possible: {}": ("3.1", "`as_strided(record, shape, stride, offset)`"),
    "unknown torch dtype {}": ("3.1", "`torch.<name>` (a dtype object only)"),
    "not a device: {}": ("3.1", "| 15 | DEVICE | str | `torch.device` |"),
    "SPARSE layout {} with {} parts": ("3.1", "layout not in table 15 or with the wrong number of components"),
    "SPARSE component {} must be a tensor node": ("3.1", "array of component nodes"),
    "not a valid {} tensor: {}": ("3.1", "a sparse tensor's index invariants depend on the values"),
    "'main' steps into a {} node": ("3.1", "`main` steps through DICT / ODICT pair keys"),
    "'main' steps into a RECORDS node": ("3.1", "`main` steps through DICT / ODICT pair keys"),
    "'main' key {} not found": ("3.1", "path that does not resolve is refused"),
    # §4 payload
    "file is {} bytes but header and payload need {}": ("1", "end of file = P + header[\"payload\"]"),
    "{} unexpected bytes after the payload end at offset {}": ("1", "(no trailing bytes)"),
    "padding at offsets {}..{} must be zero": ("1", "zero padding up to P"),
    "checksum table at payload offset {} with {} entries does not end at the payload end {}":
        ("4", "it ends exactly at `payload`"),
    "checksum table expected at payload offset {}, header says {}": ("4", "= `crcs`"),
    "padding before the checksum table (offset {}) must be zero": ("4", "the bytes skipped are zero"),
    "{} ({}) at payload offset {} {}; expected offset {}": ("4", "any section whose offset is not exactly the expected one"),
    "{}: padding before payload offset {} must be zero": ("4", "the bytes skipped are zero"),
    "tensor '{}': data checksum mismatch (sections at offset {}): file is corrupt":
        ("4", "u32 CRC-32 per tensor record"),
    # §5 encodings
    "{}: encoding {} is not defined for dtype {} (allowed: {})": ("5", "whose element type its encoding does not allow"),
    "{}: role {} is not a section of {} (allowed: {})": ("5", "and which encodings carry them"),
    "{}: sections {}, expected {}": ("5", "and which encodings carry them"),
    "{}: key '{}' does not apply to {}": ("5.3", "A key of this table in a place where it is forbidden is refused"),
    "{}: key '{}' applies only when '{}' is {}": ("5.3", "*conditional* (required when the condition holds and"),
    "{}: required key '{}' ({}) is missing": ("5.3", "*required*"),
    "{}: expected a boolean, got {}": ("5.3", "| `sg` | bool |"),
    "{}: per-channel scales need a tensor of rank >= 1, shape is []": ("5.3", "CHANNEL on a scalar (rank 0) is refused"),
    "{}: DENSE layout stores {} codes for {} elements ('m' must equal numel)": ("5.3", "DENSE: `m = numel`"),
    "dense layout stores {} codes for {} elements": ("5.3", "DENSE: `m = numel`"),
    "{}: BITMAP layout stores {} codes for {} elements": ("5.3", "BITMAP: `m ≤ numel`"),
    "{}: {} delta entries of {} bits cannot cover {} elements (at most (m + 1) x 2^iw)":
        ("5.4", "DELTA allocation bound"),
    "code width {} outside 1..16": ("5.1", "(1 ≤ b ≤ 16)"),
    "packed stream of {} {}-bit codes must be {} bytes, got {}": ("5.1", "`ceil(count × b / 8)` bytes"),
    "unused bits {}..7 of the last byte (byte {}) of a {}-bit stream must be zero, got 0x{}":
        ("5.1", "a reader refuses a stream where one is set"),
    "bitmap of {} elements must be {} bytes, got {}": ("5.1", "`ceil(count × b / 8)` bytes"),
    "raw data of {} x {} must be {} bytes, got {}": ("5.2", "`numel × itemsize` decoded bytes"),
    "BITMAP raw data of {} stored x {} must be {} bytes, got {}": ("5.2", "a RAW section of `m × itemsize` decoded bytes"),
    "{} 'nz' (negative zeros) of RAW needs sp = BITMAP and a float dtype (F32, F16, BF16, F64); got sp = {}, dtype {}":
        ("5.2", "only with `sp` = BITMAP\nand a float dtype"),
    "{} 'sp' (sparse layout): {} is not a layout of {} (allowed: {})": ("5.4", "A layout an encoding may not use is refused on open"),
    "bool tensor holds bytes other than 0 and 1": ("5.2", "BOOL bytes must be 0 or 1"),
    "dtype {} is not in the mbz dtype table": ("3", "Table 2 — element types"),
    "SCALES holds {} bytes; {} groups need {}": ("5.3", "(4·G bytes)"),
    "SCALES entry {} (of {}) is NaN; scales must not be NaN": ("5.3", "a NaN scale is refused"),
    "bitmap marks {} elements but the record stores {} codes": ("5.4", "its number of ones must\nequal `m`"),
    "delta indices reach position {} of a tensor with {} elements": ("5.4", "`p_{m−1} < numel`"),
    "delta stream leaves a final run of {} zeros; width {} allows < {}": ("5.4", "`numel − 1 − p_{m−1} < 2^iw`"),
    "CODEBOOK holds {} bytes; {} entries of {} bytes need {}": ("5.5", "(k × itemsize\nbytes"),
    "codebook index {} out of range for {} entries": ("5.5", "each < k"),
    "{}: expected one of {}, got {}": ("5.3", "| `sb` | int 4 or 8 |"),
    "{} 'sb' (scale bytes) may be 8 for quantized dtypes only, else 4; got 8 for {}": ("5.3", "which may be 8"),
    "{}: quantized dtype {} takes per-tensor or per-channel scales only": ("5.3", "GROUP is refused for a quantized dtype"),
    "quantized codes outside the {} range": ("5.3", "checks every code against the integer type's range"),
    "dtype {} is not available in torch {}": ("7", "a dtype the reading torch"),
    # §5.6 entropy stage
    "unfiltered section is {} bytes but declares {}": ("5.6", "stored_length = decoded_length"),
    "{} ({}): unfiltered section stores {} bytes but declares {}": ("5.6", "stored_length = decoded_length"),
    "unknown section filter {}; known: {}": ("5.6", "Table 7 — section filters"),
    "not a zstd frame (expected magic {} and at least 6 bytes, got {} bytes)": ("5.6", "exactly one zstd frame (RFC 8878)"),
    "zstd frame header has its reserved bit set": ("5.6", "reserved bit is 0"),
    "zstd frame names a dictionary; mbz sections use none": ("5.6", "names no dictionary"),
    "zstd frame header needs {} bytes, section has {}": ("5.6", "exactly one zstd frame (RFC 8878)"),
    "zstd frame declares {} content bytes, the header says {}": ("5.6", "when present it must equal the"),
    "zstd frame declares {} content bytes, limit {}": ("5.6", "be at most its limit"),
    "zstd frame window of {} bytes exceeds max({}, 2 x {}) = {}": ("5.6", "the window size is at most"),
    "zstd block header at byte {} runs past the section end ({} bytes)": ("5.6", "ends exactly at the section's end"),
    "zstd block at byte {} has the reserved block type": ("5.6", "reserved type 3"),
    "{}; a section holds exactly one frame": ("5.6", "no byte after the frame's last block"),
    "zstd frame does not decompress ({})": ("5.6", "it decompresses (checksum included)"),
    "zstd frame decodes to {}{} bytes, {} {}": ("5.6", "to exactly `decoded_length`"),
    # §7 limits
    "{} ({}): {} stored bytes may not expand to {} (limit {})": ("7", "`decoded_length ≤ 1024 × stored_length + 4096`"),
    "zstd section of {} bytes claims {} decoded bytes (limit {})": ("7", "`decoded_length ≤ 1024 × stored_length + 4096`"),
    "{} ({}): decoded length {}, expected {}": ("7", "equal to what the params\n   imply"),
    "{} (NEGZERO): {} bytes exceed one bit per element ({})": ("7", "NEGZERO at most `ceil(numel/8)`"),
    "tensor '{}': the tensors up to this one hold {} elements; a file of {} bytes may hold at most {} ({} x size + {})":
        ("7", "Σ numel over all tensors ≤ `64 × file_size + 2^22`"),
    "file is closed": (None, None),   # API misuse, not a file rule
}


def _template(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def raise_sites() -> dict:
    out = {}
    for f in READER_FILES:
        with open(os.path.join(ROOT, f)) as fh:
            tree = ast.parse(fh.read())
        for n in ast.walk(tree):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ERRORS and n.args:
                t = _template(n.args[0])
                if t is None and n.func.id == "_fail" and len(n.args) > 1:  # structure.py: _fail(path, what)
                    t = _template(n.args[1])
                if t:
                    out.setdefault(t, []).append(f"{f}:{n.lineno}")
    return out


def spec_sections() -> dict:
    """{'5.3': text of that section (subsections included for a top-level number)}."""
    with open(os.path.join(ROOT, "format_spec.md")) as fh:
        text = fh.read()
    heads = [(m.start(), m.group(1)) for m in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, re.M)]
    out = {}
    for i, (start, num) in enumerate(heads):
        end = len(text)
        for s2, n2 in heads[i + 1:]:
            if "." in num or not n2.startswith(num + "."):
                end = s2
                break
        out[num] = text[start:end]
    return out


def test_every_raise_site_is_mapped():
    sites = raise_sites()
    missing = {t: where for t, where in sites.items() if t not in MESSAGES}
    assert not missing, f"messages without a spec section in MESSAGES: {missing}"
    stale = [t for t in MESSAGES if t not in sites]
    assert not stale, f"MESSAGES entries with no raise site left: {stale}"


def test_every_message_maps_to_a_rule_of_the_spec():
    secs = spec_sections()
    for t, (sec, phrase) in MESSAGES.items():
        if sec is None:
            continue
        assert sec in secs, (t, sec)
        assert phrase in secs[sec], f"§{sec} does not state {phrase!r} (message {t!r})"


def test_no_message_ends_in_an_empty_colon():
    for t in raise_sites():
        assert not t.rstrip().endswith(":"), t
