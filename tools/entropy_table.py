"""Each section of a .mbz file against the entropy of its own model (results/entropy/).

    python tools/entropy_table.py FILE.mbz -o results/entropy/NAME.json

For an ARANS section (format_spec.md §5.8) the bound is the ideal code length of its decisions under
the section's own adaptive model (sum of -log2 p over every decision, p the probability the model gave
it); the stored bytes add the header, the 4-byte lane states and the coder's rounding.
For a RANS section (format_spec.md §5.7) the bound is the ideal code length of its symbols under
the section's own context model with the empirical (unquantized) frequencies, plus its raw bits;
the section's stored bytes add the frequency tables, the lane states, the header and the coder's
rounding.  For other integer sections (zstd or none) the bound shown is the order-0 entropy of
their codes; for SCALES the order-0 entropy of each byte plane.  Rows are summed by tensor kind
(weight / other) and role.  Theoretical counts, labelled as such; the file's size is the real one.
"""
import argparse
import json
import os
import sys

import numpy as np

import mbz
from mbz.codecs import arans, rans
from mbz.codecs.bitpack import unpack_codes
from mbz.container import read_sections
from mbz.encoder import section_hint
from mbz.spec import Filter, Role


def _h(x: np.ndarray) -> float:
    """Order-0 empirical entropy of x in bits (total)."""
    if x.size == 0:
        return 0.0
    _, c = np.unique(x, return_counts=True)
    return float(-(c * np.log2(c / x.size)).sum())


def rans_bound(stored, decoded: bytes, dlen: int) -> tuple[float, dict]:
    h = rans._Section(stored, dlen)
    v = unpack_codes(decoded, h.n, h.w, h.signed).astype(np.int64)
    sym, nb, _ = rans._to_symbols(v, h.alpha, h.w, h.signed)
    cv = rans._class_lut(h.alpha, h.w, h.signed)[sym].astype(np.int64)
    ctx = rans._contexts(cv, h.n, h.S, h.R, h.tl, h.tu)
    bits = sum(_h(sym[ctx == c]) for c in np.unique(ctx))
    raw = int(nb.sum()) if nb is not None else 0
    info = {"alphabet": ["DIRECT", "CLASSES"][h.alpha], "contexts": h.tl * h.tu, "lanes": h.K, "P": h.P,
            "state_bytes": 4 * h.K}
    return (bits + raw) / 8, info


def order0(role, decoded: bytes, hint) -> float:
    """Order-0 empirical entropy in bytes: of the codes (integer sections), of the float32 words (SCALES)."""
    if role == Role.SCALES and len(decoded) % 4 == 0:
        return _h(np.frombuffer(decoded, "<u4")) / 8
    if hint is None:
        return float(len(decoded))
    w, signed, _ = hint
    n = len(decoded) * 8 // w
    while n and (n * w + 7) // 8 > len(decoded):
        n -= 1
    return _h(unpack_codes(decoded, n, w, signed)) / 8 if n else 0.0


def arans_bounds(items) -> list:
    """Model bits of ARANS sections [(stored, decoded)], as bytes, with their header fields."""
    heads = [arans._Header(st, len(dec)) for st, dec in items]
    args = [(dec, h.kind, h.w, bool(h.signed), h.R, 0, h.K) for (_, dec), h in zip(items, heads)]
    bits = arans.model_bits(args) if args else []
    return [(b / 8, {"arans_kind": ["INT", "FLOAT32"][h.kind], "w": h.w, "lanes": h.K, "row": h.R,
                     "state_bytes": 4 * h.K}) for b, h in zip(bits, heads)]


def table(path: str) -> dict:
    rows = []
    with mbz.open(path) as r:
        buf = r._src.buf
        acct = r.accounting()
        recs = [(rec, read_sections(buf, rec)) for rec in r.layout.records]
        ar = [(buf[s.offset:s.offset + s.stored], secs[s.role]) for rec, secs in recs for s in rec.sections
              if s.filter == Filter.ARANS]
        ar_b = iter(arans_bounds(ar))
        for rec, secs in recs:
            kind = "weight" if rec.name.endswith("weight") and len(rec.shape) >= 2 else "other"
            for s in rec.sections:
                dec = secs[s.role]
                hint = section_hint(s.role, rec.params, rec.shape)
                info = {}
                if s.filter == Filter.ARANS:
                    bound, info = next(ar_b)
                    model = "arans adaptive"
                elif s.filter == Filter.RANS:
                    bound, info = rans_bound(buf[s.offset:s.offset + s.stored], dec, s.decoded)
                    model = "rans"
                elif hint is not None:
                    w, signed, _ = hint
                    n = s.decoded * 8 // w
                    while n and (n * w + 7) // 8 > s.decoded:
                        n -= 1
                    bound = _h(unpack_codes(dec, n, w, signed)) / 8 if n else 0.0
                    model = "order-0 of codes"
                elif s.role == Role.SCALES:
                    planes = np.frombuffer(dec, np.uint8).reshape(-1, 4)
                    bound = sum(_h(planes[:, j]) for j in range(4)) / 8
                    model = "order-0 per byte plane"
                else:
                    bound, model = float(s.decoded), "raw"
                rows.append({"tensor": rec.name, "kind": kind, "role": s.role.name, "filter": s.filter.name,
                             "bytes": s.stored, "bound_bytes": round(bound, 1), "bound_model": model,
                             "order0_bytes": round(order0(s.role, dec, hint), 1), **info})
    groups = {}
    for row in rows:
        g = groups.setdefault(f"{row['kind']} {row['role']} ({row['filter']})",
                              {"sections": 0, "bytes": 0, "bound_bytes": 0.0, "order0_bytes": 0.0})
        g["sections"] += 1
        g["bytes"] += row["bytes"]
        g["bound_bytes"] += row["bound_bytes"]
        g["order0_bytes"] += row["order0_bytes"]
    for g in groups.values():
        g["bound_bytes"] = round(g["bound_bytes"], 1)
        g["order0_bytes"] = round(g["order0_bytes"], 1)
        g["ratio"] = round(g["bytes"] / g["bound_bytes"], 4) if g["bound_bytes"] else None
    return {"file": os.path.basename(path), "file_bytes": acct["file_bytes"], "categories": acct["categories"],
            "groups": dict(sorted(groups.items())), "sections": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("-o", "--out", help="JSON output (default: print)")
    a = ap.parse_args()
    t = table(a.file)
    t["command"] = "python tools/entropy_table.py " + " ".join(sys.argv[1:])
    if a.out:
        with open(a.out, "w") as f:
            json.dump(t, f, indent=1)
    print(f"{t['file']}: {t['file_bytes']:,d} bytes")
    print(f"{'group':<36} {'sections':>8} {'bytes':>9} {'bound':>10} {'ratio':>7} {'order-0':>9}")
    for k, g in t["groups"].items():
        print(f"{k:<36} {g['sections']:>8} {g['bytes']:>9,d} {g['bound_bytes']:>10,.0f} {g['ratio'] or 0:>7.3f}"
              f" {g['order0_bytes']:>9,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
