#!/usr/bin/env python
"""Median seconds per training epoch in JSONL training logs (the first epoch of every run, which
pays for cuDNN autotuning or compilation, left out), grouped by run-name prefix.

    python tools/epoch_times.py results/final/prune_log.jsonl results/final200/train_log.jsonl \\
        --group prune --group s0. --group baseline -o results/train_speed/epoch_times.md

Each `--group P` gathers the runs whose name starts with P (e.g. every pruning step); runs that
match no group are listed by their own name.
"""
import argparse
import json
import os
import statistics


def epoch_times(path: str, groups: list[str]) -> dict:
    """{group or run name: [epoch seconds, ...]} from one log, first epoch of each run excluded."""
    out: dict = {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("epoch", 1) <= 1 or "epoch_s" not in r:
                continue
            key = next((g + "*" for g in groups if r["run"].startswith(g)), r["run"])
            out.setdefault(key, []).append(r["epoch_s"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", help="train_log.jsonl files (lines with run, epoch, epoch_s)")
    ap.add_argument("--group", action="append", default=[], help="run-name prefix to pool (repeatable)")
    ap.add_argument("-o", "--out", help="also write the table here (markdown)")
    a = ap.parse_args()
    rows = ["| log | runs | epochs | median s/epoch |", "|---|---|---:|---:|"]
    for p in a.logs:
        for key, ts in epoch_times(p, a.group).items():
            rows.append(f"| {p} | {key} | {len(ts)} | {statistics.median(ts):.2f} |")
    text = "\n".join(rows) + "\n"
    print(text, end="")
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            f.write("Command: `python tools/epoch_times.py " + " ".join(
                [*a.logs, *(f"--group {g}" for g in a.group), "-o", a.out]) + "`\n\n" + text)
        os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
