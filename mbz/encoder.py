"""Turn one tensor into its cheapest encoding (spec §5): candidates, measured.

For each tensor we build the candidate encodings that reproduce it (RAW
always; AFFINE when a grid is known or detected; CODEBOOK when few distinct
values), each in every sparse layout and code width worth trying, run each
section through the entropy stage, and keep the smallest in bytes.  The
winner is decoded once and compared bit for bit before it is accepted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .codecs.affine import Grid, group_index, n_groups, numel_of
from .codecs.bitpack import pack_bits, pack_codes, packed_size, signed_width, unsigned_width
from .codecs import arans, rans
from .codecs.filters import FILTERS, max_decoded, unfilter, zstd_available
from .codecs.qaffine import quantized_plain, split_quantized
from .codecs.raw import ITEMSIZE, bits_equal, element_view, mbz_dtype, tensor_bytes
from .codecs.sparse import best_delta_width, delta_count, delta_entries
from .errors import EncodeError
from .decoder import decode_tensor
from .detect import detect_codebook, detect_grid
from .spec import (FLOAT_DTYPES, P_AXIS, P_COUNT, P_GRAN, P_GROUP, P_IWIDTH, P_K, P_NEGZERO, P_SIGNED, P_SPARSE,
                   P_ZPWIDTH, AransKind, Encoding, Filter, Role, Sparsity, role_stride)

BIG = 1 << 16  # above this many elements, search fewer candidates

# Default profile, RAW sections of RAW_PLAIN_MIN bytes or more: stored unfiltered (read with no decoding and, in
# mbz.open, no copy) unless the entropy stage at least halves them.  Byte-plane zstd saves 7-16% on trained or
# random-init float32 weights and decodes at 150-300 MB/s on one core, against a plain read at several GB/s:
# below a saving of 1/2 it costs more load time than the bytes it saves take to read
# (results/format_inputs/README.md).  Smaller sections, and every section in the "best" profile, keep the smallest.
RAW_PLAIN_MIN = 64 << 10
RAW_KEEP_SAVING = 0.5
# Default profile, models of LARGE_MODEL bytes of tensors or more (where decoding takes a noticeable time),
# CODES / MASK / DELTAS sections of RAW_PLAIN_MIN bytes or more: zstd is kept where it saves at least 1/8.
# Codes that zstd's Huffman stage barely shrinks (8-bit codes of near-uniform values) decode at 200-300 MB/s
# for a few percent: on the resnet50 benchmark (8-bit, 50% sparse, 102 MB of fp32) this rule loads 20% faster
# for 3.8% more bytes (results/format_inputs/README.md).  Smaller models keep the smallest: their decode time
# is milliseconds (a torch.ao PTQ MobileNet-v2 would grow 3.4%).
INT_KEEP_SAVING = 0.125
LARGE_MODEL = 64 << 20
# --best: large zstd sections that the trial level shrinks below this fraction are compressed again at level 19
# (an 80%-pruned fp32 conv: 3.11 -> 2.47 MB; dense floats gain ~1% at a few MB/s and keep the trial level)
BEST_DEEP = 0.5
# RAW in the BITMAP layout (spec §5.2, format 1.2) is tried for tensors with at least this fraction of all-zero
# elements (pruned float weights).  In the default profile a large tensor (RAW_PLAIN_MIN bytes or more) takes it
# only where it stores at most 1 - RAW_KEEP_SAVING of the plain bytes: a scatter is not free at load time.
BITMAP_MIN_ZEROS = 0.125
RAW_BITMAP_SKIP = 2  # see encode_tensor: a grid this many times smaller than the stored elements skips RAW BITMAP
SAMPLE_BLOCK = 64 << 10  # a large RAW section's saving is first estimated on RAW_SAMPLES blocks of this size
RAW_SAMPLES = 8


@dataclass
class Section:
    role: Role
    filter: Filter
    decoded_len: int
    data: bytes


@dataclass
class EncodedTensor:
    name: str
    dtype: int
    shape: tuple
    encoding: Encoding
    params: dict
    sections: list = field(default_factory=list)

    @property
    def stored_bytes(self) -> int:
        return sum(len(s.data) for s in self.sections)


# RANS profiles (spec §5.7 lanes): the most symbols one lane codes, and the saving over zstd / none that
# RANS must bring to be kept.  "default" spends decode time only where it buys bytes; "best" takes the
# smallest section whatever its decode time.
RANS_PROFILES = {"default": (1024, 0.03), "best": (16384, 0.0)}
# ARANS (spec §5.8) in the "best" profile: about this many decisions per lane
ARANS_STEPS = 16384


@dataclass
class EntropyPolicy:
    """Which entropy stages to try per section, and how hard.

    Candidates are compared at a fast `trial` level; the winner is compressed
    again at `level`.  Default (no level given): 19 for sections under
    `small_section` bytes of models under 64 MB of tensors, the trial level for
    every other section (level 19 runs at a few MB/s and gains about 1% on
    large float sections: it made lossless packing of a ResNet-18 take 50 s).
    Profile "best": 19 for every section, except large ones the trial level
    shrinks by less than half (BEST_DEEP), which keep the trial level.
    `rans` tries the RANS filter (spec §5.7) on integer sections (codes, masks, deltas, zero points) with
    the lane and gain settings of `profile` (RANS_PROFILES).  `large` (set by resolved() for models of
    LARGE_MODEL bytes of tensors or more) turns on the INT_KEEP_SAVING rule of the default profile.
    """
    zstd: bool = True
    level: int | None = None
    trial: int = 1
    auto: bool = False            # level chosen by resolved(): large sections keep the trial level
    small_section: int = 128 << 10
    rans: bool = False
    profile: str = "default"
    large: bool = False

    def resolved(self, total_bytes: int) -> "EntropyPolicy":
        large = total_bytes >= LARGE_MODEL
        if self.level is not None:
            return EntropyPolicy(self.zstd, self.level, self.trial, self.auto, self.small_section, self.rans,
                                 self.profile, large)
        if self.profile == "best":  # level 19, large sections too where they compress well (final())
            return EntropyPolicy(self.zstd, 19, self.trial, auto=True, rans=self.rans, profile=self.profile,
                                 large=large)
        return EntropyPolicy(self.zstd, 19 if not large else self.trial, self.trial, auto=True,
                             rans=self.rans, profile=self.profile, large=large)

    def final(self, sections: list, plain: list, itemsize: int, hints: list | None = None) -> list:
        """The winner's sections for real (`plain`: its unfiltered (role, bytes), same order; `hints`: their
        section_hint): zstd at the final level (large sections of an auto policy keep the trial level), and
        RANS sections, compared on estimates so far, coded (kept if still the smallest)."""
        level = self.level if self.level is not None else 19
        hints = hints or [None] * len(plain)
        out = []
        for s, (role, data), hint in zip(sections, plain, hints):
            lvl = min(self.trial, level) if self.auto and len(data) >= self.small_section else level
            if (lvl != level and self.profile == "best" and s.filter in (Filter.ZSTD, Filter.SHUFFLE_ZSTD)
                    and len(s.data) < BEST_DEEP * len(data)):
                lvl = level  # --best: a large section the trial level already halves (pruned floats) gains ~20% more
            if s.filter == Filter.NONE and (plain_raw(role, len(data), self) or plain_int(role, len(data), self)):
                pass  # plain by the default profile's rule: not worth compressing harder
            elif s.filter == Filter.RANS or lvl != min(self.trial, level):
                s = filter_section(role, data, itemsize, self, lvl, hint)
            out.append(s)
        return out


def section_hint(role: Role, p: dict, shape: tuple):
    """(code width, signed, row length) of an integer section, for RANS; None for float sections."""
    n = numel_of(shape)
    row = n // shape[0] if len(shape) >= 2 and shape[0] else 0
    if role == Role.CODES:
        if P_K not in p and P_GRAN not in p:
            return None
        dense = p.get(P_SPARSE) == int(Sparsity.DENSE)
        return p["b"], bool(p.get(P_SIGNED, False)), row if dense else 0
    if role == Role.MASK:
        return 1, False, row
    if role == Role.DELTAS:
        return p[P_IWIDTH], False, 0
    if role == Role.ZERO_POINTS:
        return p[P_ZPWIDTH], False, 0
    if role == Role.NEGZERO:
        return 1, False, 0
    return None


def plain_raw(role: Role, n: int, ent: EntropyPolicy) -> bool:
    """Whether a RAW section of `n` bytes falls under the default profile's plain-storage rule (RAW_PLAIN_MIN)."""
    return role == Role.RAW and n >= RAW_PLAIN_MIN and ent.profile == "default"


def plain_int(role: Role, n: int, ent: EntropyPolicy) -> bool:
    """Whether a CODES / MASK / DELTAS section of `n` bytes falls under the INT_KEEP_SAVING rule."""
    return (role in (Role.CODES, Role.MASK, Role.DELTAS) and n >= RAW_PLAIN_MIN and ent.profile == "default"
            and ent.large)


def _sample_saving(data, stride: int) -> float:
    """Estimated byte-plane zstd (level 1) saving of a large section, from RAW_SAMPLES evenly spaced blocks."""
    n = len(data)
    block = SAMPLE_BLOCK - SAMPLE_BLOCK % max(stride, 1)
    raw = stored = 0
    for i in range(RAW_SAMPLES):
        at = (n - block) * i // (RAW_SAMPLES - 1)
        at -= at % max(stride, 1)
        piece = data[at:at + block]
        raw += len(piece)
        stored += len(FILTERS[Filter.SHUFFLE_ZSTD if stride > 1 else Filter.ZSTD].encode(piece, stride, 1))
    return 1 - stored / raw


def arans_hint(role: Role, p: dict, shape: tuple, data):
    """(kind, width, signed, row length) of a section for ARANS (spec §5.8); None where it does not apply."""
    if role == Role.SCALES:
        if p.get("sb", 4) != 4 or len(data) % 4:
            return None
        return AransKind.FLOAT32, arans.fraction_bits(data), False, 0
    hint = section_hint(role, p, shape)
    if hint is None:
        return None
    w, signed, row = hint
    return AransKind.INT, w, signed, row


def arans_pass(tensors: list, steps: int = ARANS_STEPS, progress=None) -> int:
    """Re-code every section of `tensors` (EncodedTensor, changed in place) that ARANS (spec §5.8) stores in
    fewer bytes; all candidate sections are coded in one batch, then decoded in one batch and compared.
    Returns the bytes saved.  Raises EncodeError if a coded section does not decode to its bytes (internal)."""
    cands = []
    for ti, et in enumerate(tensors):
        for si, s in enumerate(et.sections):
            if len(s.data) < 16 or s.filter == Filter.ARANS:
                continue
            cands.append((ti, si, s))
    plain, items, where = [], [], []
    rans_idx = [k for k, (_, _, s) in enumerate(cands) if s.filter == Filter.RANS]
    rans_out = dict(zip(rans_idx, rans.decode_many([(cands[k][2].data, cands[k][2].decoded_len) for k in rans_idx])))
    for k, (ti, si, s) in enumerate(cands):
        et = tensors[ti]
        if s.role != Role.SCALES and section_hint(s.role, et.params, et.shape) is None:
            continue  # float sections (RAW, CODEBOOK) are not decoded at all
        if s.filter == Filter.RANS:
            data = rans_out[k]
        else:
            data = bytes(unfilter(s.role, s.filter, s.data, s.decoded_len, 4 if s.role == Role.SCALES else 1))
        hint = arans_hint(s.role, et.params, et.shape, data)
        if hint is None:
            continue
        plain.append(data)
        items.append((data, *hint, steps))
        where.append((ti, si))
    if not items:
        return 0
    coded = arans.encode_many(items)
    keep = [k for k, (ti, si) in enumerate(where) if len(coded[k]) < len(tensors[ti].sections[si].data)
            and len(plain[k]) <= max_decoded(len(coded[k]))]
    back = arans.decode_many([(coded[k], len(plain[k])) for k in keep])
    saved = 0
    for k, b in zip(keep, back):
        if bytes(b) != plain[k]:
            raise EncodeError(f"arans: section of tensor '{tensors[where[k][0]].name}' does not round-trip (internal error)")
        ti, si = where[k]
        s = tensors[ti].sections[si]
        saved += len(s.data) - len(coded[k])
        tensors[ti].sections[si] = Section(s.role, Filter.ARANS, len(plain[k]), coded[k])
    return saved


def filter_section(role: Role, data: bytes, itemsize: int, ent: EntropyPolicy, level: int, hint=None,
                   estimate: bool = False) -> Section:
    """The smallest of none / zstd / shuffle+zstd / RANS (the last only with a `hint`, see section_hint).

    Default profile: a RAW section of RAW_PLAIN_MIN bytes or more stays unfiltered unless zstd saves at least
    RAW_KEEP_SAVING of it (sections of RAW_SAMPLES x SAMPLE_BLOCK bytes or more are first estimated on
    samples, and not compressed when the estimate falls well short); CODES / MASK / DELTAS sections of that
    size unless it saves INT_KEEP_SAVING (RANS is then not tried either).
    With `estimate`, a RANS section is not coded: its data is a placeholder of the estimated length
    (filter RANS, data empty bytes of that length) for comparing candidates; EntropyPolicy.final codes it.
    """
    best = Section(role, Filter.NONE, len(data), data)  # bytes or a uint8 array (written as is, never copied)
    if len(data) < 16:
        return best
    plain = plain_raw(role, len(data), ent)
    if plain and ent.zstd and zstd_available() and len(data) >= 4 * RAW_SAMPLES * SAMPLE_BLOCK and \
            _sample_saving(data, role_stride(role, itemsize)) < 0.8 * RAW_KEEP_SAVING:
        return best
    if ent.zstd and zstd_available():
        stride = role_stride(role, itemsize)
        # both, whatever the size: byte planes win on dense floats, plain zstd on pruned ones (zero runs span
        # all bytes of an element: 3.11 vs 3.27 MB on an 80%-pruned 512x512x3x3 fp32 conv at level 1)
        tries = [Filter.ZSTD] + ([Filter.SHUFFLE_ZSTD] if stride > 1 else [])
        for fid in tries:
            out = FILTERS[fid].encode(data, stride, level)
            if len(out) < len(best.data) and len(data) <= max_decoded(len(out)):
                best = Section(role, fid, len(data), out)
        if plain and len(best.data) > len(data) * (1 - RAW_KEEP_SAVING):
            return Section(role, Filter.NONE, len(data), data)
        if plain_int(role, len(data), ent) and len(best.data) > len(data) * (1 - INT_KEEP_SAVING):
            return Section(role, Filter.NONE, len(data), data)
    if ent.rans and hint is not None:
        steps, gain = RANS_PROFILES[ent.profile]
        w, signed, row = hint
        pl = rans.plan(data, w, signed, row, steps)
        if pl.estimate < len(best.data) * (1 - gain) and len(data) <= max_decoded(int(pl.estimate)):
            if estimate:
                return Section(role, Filter.RANS, len(data), bytes(int(pl.estimate) + 1))
            out = pl.encode()
            if len(out) < len(best.data) * (1 - gain) and len(data) <= max_decoded(len(out)):
                best = Section(role, Filter.RANS, len(data), out)
    return best


def raw_bitmap_candidate(data, itemsize: int, signed_zero: bool = False):
    """RAW in the BITMAP layout (spec §5.2): (params, [(MASK, bitmap), (RAW, stored elements)[, (NEGZERO,
    bits)]]) from the tensor's bytes `data` (a flat uint8 array), or None when fewer than BITMAP_MIN_ZEROS of
    its elements are zero.  A stored element is one whose bits are not all zero (NaNs are stored as they
    are); with `signed_zero` (a float dtype of FLOAT_DTYPES) -0.0 elements are not stored either but marked
    in a NEGZERO section (param nz) when there are any, one bit per unstored element."""
    n = len(data) // itemsize
    if n < 16:
        return None
    data = np.asarray(data)
    negzero = 1 << (8 * itemsize - 1) if signed_zero and itemsize in (2, 4, 8) else None
    if itemsize in (1, 2, 4, 8) and data.flags.writeable:  # a first count on torch's threads: dense tensors
        ints = torch.from_numpy(data.view(f"<i{itemsize}"))    # stop here, at ~10 GB/s
        if negzero is not None:   # -0.0 counts as zero: every 8th element, shifted out of its sign bit
            ints = ints[::8].bitwise_left_shift(1)
        m = int(torch.count_nonzero(ints))
        if ints.numel() - m < BITMAP_MIN_ZEROS * ints.numel() * (0.5 if negzero is not None else 1.0):
            return None
    elems = element_view(data, itemsize)
    stored = elems != 0 if elems.ndim == 1 else elems.any(axis=1)
    neg = None
    if negzero is not None:
        neg_at = elems == negzero
        if neg_at.any():
            stored &= ~neg_at
            neg = neg_at[~stored]
    m = int(np.count_nonzero(stored))
    if n - m < BITMAP_MIN_ZEROS * n:
        return None
    values = np.ascontiguousarray(elems[stored]).reshape(-1).view(np.uint8)
    p = {P_SPARSE: int(Sparsity.BITMAP), P_COUNT: m}
    secs = [(Role.MASK, pack_bits(stored)), (Role.RAW, values)]
    if neg is not None:
        p[P_NEGZERO] = True
        secs.append((Role.NEGZERO, pack_bits(neg)))
    return p, secs


def _sparse_layouts(codes_full: np.ndarray, stored: np.ndarray, numel: int, width: int, big: bool):
    """Yield (params, index sections, stored codes) for dense / bitmap / delta."""
    layouts = []
    positions = np.flatnonzero(stored)
    dense = ({P_SPARSE: int(Sparsity.DENSE), P_COUNT: numel}, [], codes_full)
    bitmap_cost = (numel + 7) // 8 + packed_size(positions.size, width)
    iw = best_delta_width(positions, numel, width)
    n_entries = delta_count(positions, numel, iw)
    delta_cost = packed_size(n_entries, iw) + packed_size(n_entries, width)
    dense_cost = packed_size(numel, width)
    costs = {Sparsity.DENSE: dense_cost, Sparsity.BITMAP: bitmap_cost, Sparsity.DELTA: delta_cost}
    # big tensors: the analytic best, plus DENSE, which zstd often shrinks as much and which decodes fastest
    keep = set(costs) if not big else {min(costs, key=costs.get), Sparsity.DENSE}
    if Sparsity.DENSE in keep:
        layouts.append(dense)
    if Sparsity.BITMAP in keep:
        layouts.append(({P_SPARSE: int(Sparsity.BITMAP), P_COUNT: int(positions.size)},
                        [(Role.MASK, pack_bits(stored))], codes_full[positions]))
    if Sparsity.DELTA in keep:
        entries, _ = delta_entries(positions, numel, iw)
        all_pos = np.cumsum(entries.astype(np.int64) + 1) - 1
        layouts.append(({P_SPARSE: int(Sparsity.DELTA), P_COUNT: int(entries.size), P_IWIDTH: iw},
                        [(Role.DELTAS, pack_codes(entries, iw))], codes_full[all_pos]))
    return layouts


def _widths(width: int, big: bool):
    if width in (8, 16):
        return [width]
    return [width, 8 if width < 8 else 16]


def _group_minmax(grid: Grid):
    """Per-group min(k, 0) and max(k, 0) (zero is always representable: fillers need it)."""
    k = grid.k
    if grid.gran == 0:
        lo, hi = k.min(keepdims=True), k.max(keepdims=True)
    elif grid.gran == 1:
        sh = grid.shape
        r = k.reshape(numel_of(sh[:grid.axis]), sh[grid.axis], numel_of(sh[grid.axis + 1:]))
        lo, hi = r.min(axis=(0, 2)), r.max(axis=(0, 2))
    else:
        starts = np.arange(0, k.size, grid.group_size)
        lo, hi = np.minimum.reduceat(k, starts), np.maximum.reduceat(k, starts)
    return np.minimum(lo, 0), np.maximum(hi, 0)


def affine_candidates(grid: Grid, signbits: np.ndarray | None, big: bool):
    """Plain (unfiltered) candidates: list of (params, [(role, bytes)])."""
    k = grid.k
    n = k.size
    g = n_groups(grid.gran, grid.shape, grid.axis, grid.group_size)
    base = {P_GRAN: int(grid.gran)}
    if grid.gran == 1:
        base[P_AXIS] = grid.axis
    if grid.gran == 2:
        base[P_GROUP] = grid.group_size
    kmin, kmax = (int(k.min()), int(k.max())) if n else (0, 0)
    signed = kmin < 0
    w_plain = signed_width(kmin, kmax) if signed else unsigned_width(kmax)
    codes_full, zsec, w, zb = k, [], w_plain, 0
    if signed and n:
        # zero-point variant: a per-group offset makes the codes unsigned and narrower
        gmin, gmax = _group_minmax(grid)
        w_off = unsigned_width(int((gmax - gmin).max()))
        zp = -gmin
        zb_try = unsigned_width(int(zp.max()))  # zp = -min(k, 0) >= 0
        if w_off < w_plain and (w_plain > 16 or n * (w_plain - w_off) / 8 > packed_size(g, zb_try)):
            gi = group_index(grid.gran, grid.shape, grid.axis, grid.group_size)
            codes_full, w, zb, signed = k + zp[gi], w_off, zb_try, False
            zsec = [(Role.ZERO_POINTS, pack_codes(zp, zb))]
    if w > 16 or zb > 16:
        return []  # wider than the format's codes: RAW it is
    scales = [(Role.SCALES, grid.scales.astype("<f4").tobytes())]
    nz_sec = []
    if signbits is not None:
        f = grid.values()
        zero_at = np.flatnonzero(f == 0)
        neg = signbits[zero_at]
        if neg.any():
            nz_sec = [(Role.NEGZERO, pack_bits(neg))]
    out = []
    for sp_params, idx_secs, codes in _sparse_layouts(codes_full, k != 0, n, w, big):
        for width in _widths(w, big):
            p = dict(base, b=width, **sp_params)
            if signed:
                p[P_SIGNED] = True
            if zb:
                p[P_ZPWIDTH] = zb
            if nz_sec:
                p[P_NEGZERO] = True
            secs = [(Role.CODES, pack_codes(codes, width, signed))] + idx_secs + scales + zsec + nz_sec
            out.append((p, secs))
    return out


def codebook_candidates(uniq: np.ndarray, inv: np.ndarray, itemsize: int, big: bool):
    k = uniq.size
    w = unsigned_width(k - 1)
    book = [(Role.CODEBOOK, uniq.astype(uniq.dtype.newbyteorder("<")).tobytes())]
    stored = uniq[inv] != 0
    if stored.all() or uniq[0] != 0:
        layouts = [({P_SPARSE: int(Sparsity.DENSE), P_COUNT: inv.size}, [], inv)]
    else:
        layouts = _sparse_layouts(inv, stored, inv.size, w, big)
    out = []
    for sp_params, idx_secs, codes in layouts:
        for width in _widths(w, big):
            p = dict(sp_params, b=width, k=k)
            out.append((p, [(Role.CODES, pack_codes(codes, width))] + idx_secs + book))
    return out


def encode_tensor(name: str, t: torch.Tensor, grid: Grid | None = None, ent: EntropyPolicy | None = None,
                  detect: bool = True) -> EncodedTensor:
    """Smallest exact encoding of t (or of `grid`, when lossy quantization made one)."""
    ent = ent or EntropyPolicy()
    t = t.detach().cpu().contiguous()
    try:
        dt = mbz_dtype(t)
    except EncodeError:
        raise
    except Exception as e:  # name the tensor
        raise EncodeError(f"{name}: {e}") from None
    if t.is_quantized:
        return _encode_quantized(name, t, dt, ent)
    shape = tuple(t.shape)
    itemsize = ITEMSIZE[dt]
    n = numel_of(shape)
    big = n > BIG
    lossy = grid is not None
    if lossy:  # every candidate, RAW included, must hold the quantized values
        t = torch.from_numpy(grid.values()).reshape(shape).to(t.dtype)
    signbits = None
    raw = tensor_bytes(t)
    plain = [(Encoding.RAW, {}, [(Role.RAW, raw)])]
    if grid is None and detect and n > 0 and t.is_floating_point():
        grid = detect_grid(t)
        if grid is not None:
            signbits = np.signbit(t.float().reshape(-1).numpy())
        elif n >= 16:
            cb = detect_codebook(t)
            if cb is not None and unsigned_width(cb[0].size - 1) < 8 * itemsize:
                plain += [(Encoding.CODEBOOK, p, s) for p, s in codebook_candidates(cb[0], cb[1], itemsize, big)]
    size = lambda c: sum(len(b) for _, b in c[2])  # noqa: E731
    if grid is not None:
        plain += [(Encoding.AFFINE, p, s) for p, s in affine_candidates(grid, signbits, big)]
    # RAW in the BITMAP layout stores every non-zero element whole; where an exact grid's codes take
    # 1 / RAW_BITMAP_SKIP of that or less, zstd will not make it win (as for the dense RAW below): not built
    grid_bytes = min((size(c) for c in plain[1:]), default=None) if grid is not None else None
    if grid_bytes is None or RAW_BITMAP_SKIP * grid_bytes > int(np.count_nonzero(grid.k)) * itemsize:
        bitmap = raw_bitmap_candidate(raw, itemsize, signed_zero=dt in FLOAT_DTYPES)
        if bitmap is not None:
            plain.insert(1, (Encoding.RAW, *bitmap))
    if big:  # the three smallest before entropy coding
        plain = plain[:1] + sorted(plain[1:], key=size)[:3]
    if len(plain) > 1 and min(size(c) for c in plain[1:]) * 2 <= size(plain[0]):
        plain = plain[1:]  # an exact grid at half the raw size or less: zstd will not make raw win
    level = ent.level if ent.level is not None else 19
    trial = min(ent.trial, level)
    best = best_plain = None
    for enc, p, secs in plain:
        sections = [filter_section(role, data, itemsize, ent, trial, section_hint(role, p, shape), estimate=True)
                    for role, data in secs]
        cand = EncodedTensor(name, int(dt), shape, enc, p, sections)
        if enc == Encoding.RAW and p and plain_raw(Role.RAW, len(raw), ent) and \
                cand.stored_bytes > (1 - RAW_KEEP_SAVING) * len(raw):
            continue  # default profile: a large tensor is scattered at load time only where that halves its bytes
        if best is None or cand.stored_bytes < best.stored_bytes:
            best, best_plain = cand, secs
    if best is None:  # only the BITMAP candidate was left, and it did not halve the bytes
        best_plain = [(Role.RAW, raw)]
        best = EncodedTensor(name, int(dt), shape, Encoding.RAW, {},
                             [filter_section(Role.RAW, raw, itemsize, ent, trial, estimate=True)])
    best.sections = ent.final(best.sections, best_plain, itemsize,
                              [section_hint(role, best.params, shape) for role, _ in best_plain])
    if best.encoding != Encoding.RAW or best.params:
        back = decode_tensor(best)
        if not bits_equal(back, t):
            if lossy:
                raise EncodeError(f"{name}: quantized grid does not round-trip (internal error)")
            best = EncodedTensor(name, int(dt), shape, Encoding.RAW, {},
                                 [filter_section(Role.RAW, raw, itemsize, ent, level)])
    return best



def _encode_quantized(name: str, t: torch.Tensor, dt, ent: EntropyPolicy) -> EncodedTensor:
    """A torch quantized tensor as AFFINE codes with its float64 scales and zero points (spec §5.3.1)."""
    grid = split_quantized(t, name)
    base, q, stored, w, signed, extra = quantized_plain(grid, name)
    n = q.size
    big = n > BIG
    level = ent.level if ent.level is not None else 19
    best = None
    for sp_params, idx_secs, codes in _sparse_layouts(q, stored, n, w, big):
        for width in _widths(w, big):
            p = dict(base, b=width, **sp_params)
            secs = [(Role.CODES, pack_codes(codes, width, signed))] + idx_secs + extra
            cand = EncodedTensor(name, int(dt), tuple(t.shape), Encoding.AFFINE, p,
                                 [filter_section(role, data, 1, ent, min(ent.trial, level), section_hint(role, p, tuple(t.shape)), estimate=True)
                                  for role, data in secs])
            if best is None or cand.stored_bytes < best[0].stored_bytes:
                best = (cand, secs)
    et, secs = best
    et.sections = ent.final(et.sections, secs, 1, [section_hint(role, et.params, tuple(t.shape)) for role, _ in secs])
    if not bits_equal(decode_tensor(et), t):
        raise EncodeError(f"{name}: quantized tensor does not round-trip (internal error)")
    return et
