"""`mbz bench`: inference latency of a packed model, rebuilt with mbz.load_model (batch 1 and 256, CPU and GPU)."""
from __future__ import annotations

import json
import sys

from .common import add_force, input_file, output_file


def _ints(text: str, what: str) -> list[int]:
    from ..errors import UsageError
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected comma-separated integers") from None
    if not vals:
        raise UsageError(f"{what}: give at least one value")
    return vals


def cmd_bench(a) -> int:
    from ..errors import UsageError
    input_file(a.file, ".mbz file")
    if a.output:
        output_file(a.output, inputs=[a.file], force=a.force)
    batches = _ints(a.batch, "--batch")
    devices = None if a.device == "auto" else [d.strip() for d in a.device.split(",") if d.strip()]
    if a.runs < 1 or a.warmup < 0:
        raise UsageError(f"--runs must be >= 1 and --warmup >= 0 (got {a.runs}, {a.warmup})")
    from ..pipeline.latency import bench_file, format_table
    from .evaluate import user_model
    model = user_model(a.model) if a.model else None

    def progress(row):
        if not a.quiet:
            print(f"{row['device']} batch {row['batch']}: median {row['median_ms']:.3f} ms", file=sys.stderr,
                  flush=True)
    res = bench_file(a.file, batches, devices, runs=a.runs, warmup=a.warmup, threads=a.threads, progress=progress,
                     model=model)
    res["command"] = (f"mbz bench {a.file} --batch {a.batch} --device {a.device} --runs {a.runs} --warmup {a.warmup}"
                      + (f" --threads {a.threads}" if a.threads else "") + (f" --model {a.model}" if a.model else ""))
    if a.output:
        from ..container import atomic_write
        atomic_write(a.output, [json.dumps(res, indent=1).encode() + b"\n"])
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{a.file}: input {'x'.join(map(str, res['input_size']))}, {res['warmup']} warm-up + {res['runs']} timed runs, "
          f"torch {res['torch']}, {res['torch_threads']} CPU threads" + (f", GPU {res['gpu']}" if "gpu" in res else ""))
    print(format_table(res))
    if a.output:
        print(f"wrote {a.output}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="inference latency of a packed model (batch 1 and 256, CPU and GPU)",
                       description="Rebuild the model of a .mbz file (mbz.load_model) and time its forward pass on "
                                   "a random input of the file's preprocess input_size (3x32x32 if none): --warmup "
                                   "untimed passes, then --runs timed ones, for each batch size and device. Prints "
                                   "the median and the 10th / 90th percentiles in milliseconds per batch, and "
                                   "images per second. The model computes in float32 with simulated activation "
                                   "quantizers: this is the PyTorch model's latency, not an integer engine's. "
                                   "Timings depend on the machine and its load.")
    p.add_argument("file", help=".mbz file with 'arch' metadata (mbz pack --arch), or any .mbz with --model")
    p.add_argument("--model", metavar="PACKAGE.MODULE:BUILDER",
                   help="your own network, as for mbz eval: import PACKAGE.MODULE, call BUILDER() and fill the module "
                        "it returns with the file's tensors; the file's 'arch' is then not used")
    p.add_argument("--batch", default="1,256", help="batch sizes, comma-separated (default 1,256)")
    p.add_argument("--device", default="auto", help="auto (the CPU, and cuda where present), or a list: cpu,cuda:0")
    p.add_argument("--runs", type=int, default=20, help="timed runs per batch and device (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before them (default 3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (every run's time included)")
    p.add_argument("-o", "--output", help="also write the JSON results to this file (atomically)")
    add_force(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(fn=cmd_bench)
