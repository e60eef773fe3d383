"""Activation sizes and peak live activation memory of one inference, fp32 vs packed integers.

Method.  Every activation that crosses a layer boundary in the quantized model
is the output of an activation quantizer (ReLU / ReLU6 outputs: unsigned; other
tensors a conv / linear reads, such as MobileNet-v2's block outputs: signed;
mbz.models.act_quant.act_points) or the 8-bit input image.  `measure` runs an
inference in which each such activation is really converted to integer codes,
bit-packed with mbz's own packer (`pack_codes`), and unpacked again before the
next layer reads it, so the model evaluated is the one that holds activations as
packed bytes; it records the byte length of every packed buffer.  Peak live
memory walks the same sequence with the model's torch.fx graph: when a quantized
tensor is written, it is live together with every earlier one that a node after
the previous quantized tensor still reads (the layer's input, and the shortcut a
residual block holds until its add).  The graph figures (numel x bits / 8) are
computed beside the measured ones.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..codecs.bitpack import pack_codes, unpack_codes
from ..models.act_quant import ActQuant, graph_tracer


def _readers(model: torch.nn.Module) -> tuple[dict, dict, int]:
    """({id(quantizer): graph position of the tensor it writes}, {id(quantizer): position of the last node that
    reads that tensor}, position of the input's last reader), from the model's torch.fx graph (quantizers are
    leaves; one applied by a forward hook is traced where the hook applies it)."""
    graph = graph_tracer().trace(model)
    order = {n: i for i, n in enumerate(graph.nodes)}
    mods = dict(model.named_modules())
    at, last, x_last = {}, {}, 0
    for n in graph.nodes:
        end = max((order[u] for u in n.users), default=order[n])
        if n.op == "call_module" and isinstance(mods.get(n.target), ActQuant):
            at[id(mods[n.target])], last[id(mods[n.target])] = order[n], end
        elif n.op == "placeholder":
            x_last = max(x_last, end)
    return at, last, x_last


def measure(model: torch.nn.Module, x: torch.Tensor, input_bits: int = 8) -> dict:
    model.eval()
    at, last, x_last = _readers(model)
    events = []          # (name, numel, packed_bytes, bits, graph position, position of the last reader)

    def pack_hook(name, q: ActQuant):
        def hook(mod, inp, out):
            step = float(q.step())
            codes = torch.round(out / step).to(torch.int64).cpu().numpy().reshape(-1)
            buf = pack_codes(codes, q.bits, signed=q.signed)
            back = unpack_codes(buf, codes.size, q.bits, signed=q.signed).astype(np.float32)
            held = torch.from_numpy(back).reshape(out.shape).to(out.device) * step
            events.append((name, out.numel(), len(buf), q.bits, at[id(q)], last[id(q)]))
            return held
        return hook

    handles = []
    qs = {n: m for n, m in model.named_modules() if isinstance(m, ActQuant) and m.bits < 32}
    for n, m in qs.items():
        handles.append(m.register_forward_hook(pack_hook(n, m)))
    try:
        with torch.no_grad():
            n_in = x.numel()
            in_bytes = math.ceil(n_in * input_bits / 8)
            events.append(("input", n_in, in_bytes, input_bits, 0, x_last))
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    rows, peak_fp32, peak_packed = [], 0, 0
    for k, (name, numel, pbytes, bits, pos, _) in enumerate(events):
        # live while the layers before this tensor run: it, and every earlier one that a later node still reads
        held = [e for e in events[:k] if e[5] > events[k - 1][4]]
        live_p = pbytes + sum(e[2] for e in held)
        live_f = 4 * numel + sum(4 * e[1] for e in held)
        peak_fp32, peak_packed = max(peak_fp32, live_f), max(peak_packed, live_p)
        rows.append({"name": name, "numel": numel, "bits": bits, "fp32_bytes": 4 * numel, "packed_bytes": pbytes,
                     "graph_bytes": math.ceil(numel * bits / 8)})
    tot_f = sum(r["fp32_bytes"] for r in rows)
    tot_p = sum(r["packed_bytes"] for r in rows)
    return {"batch": x.shape[0], "layers": rows, "total_fp32_bytes": tot_f, "total_packed_bytes": tot_p,
            "total_ratio": tot_f / tot_p, "peak_fp32_bytes": peak_fp32, "peak_packed_bytes": peak_packed,
            "peak_ratio": peak_fp32 / peak_packed, "output": y}


def activation_report(model: torch.nn.Module, batch: int = 32, input_size=(3, 32, 32), seed: int = 0) -> dict:
    """{'batch1': measure(...), 'batch{B}': ...} on random inputs, each with 'logits_unchanged': whether
    holding the activations as packed bytes left every logit of the model bit-identical."""
    res = {}
    g = torch.Generator().manual_seed(seed)
    for b in dict.fromkeys((1, batch)):
        x = torch.randn(b, *input_size, generator=g)
        with torch.no_grad():
            ref = model(x)
        m = measure(model, x)
        m["logits_unchanged"] = bool(torch.equal(m.pop("output"), ref))
        res[f"batch{b}"] = m
    return res


def markdown(res: dict, batch: int) -> list[str]:
    """The lines of activations.md for `res` = {'file', 'command', 'batch1', 'batch{B}'}."""
    b1, bb = res["batch1"], res[f"batch{batch}"]
    L = [f"# Activation memory of {res['file']}", "", f"Command: `{res['command']}`", "",
         "Measured by packing every inter-layer activation with mbz's bit packer during a real inference "
         "(method: mbz/pipeline/activations.py). Logits identical to the unpacked run: "
         f"{b1['logits_unchanged'] and bb['logits_unchanged']}.", "",
         "| batch | all activations fp32 | packed | ratio | peak live fp32 | peak live packed | ratio |",
         "|---:|---:|---:|---:|---:|---:|---:|"]
    for k in dict.fromkeys(("batch1", f"batch{batch}")):
        r = res[k]
        L.append(f"| {r['batch']} | {r['total_fp32_bytes']:,} | {r['total_packed_bytes']:,} | {r['total_ratio']:.2f}x | "
                 f"{r['peak_fp32_bytes']:,} | {r['peak_packed_bytes']:,} | {r['peak_ratio']:.2f}x |")
    L += ["", "Per layer (batch 1): measured packed bytes and the graph figure numel x bits / 8.", "",
          "| activation | numel | bits | fp32 bytes | packed bytes (measured) | graph bytes |",
          "|---|---:|---:|---:|---:|---:|"]
    for r in b1["layers"]:
        L.append(f"| {r['name']} | {r['numel']:,} | {r['bits']} | {r['fp32_bytes']:,} | {r['packed_bytes']:,} | "
                 f"{r['graph_bytes']:,} |")
    return L
