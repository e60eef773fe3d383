#!/usr/bin/env python
"""Write REPORT.md (and its charts) from the recorded files under results/ and examples/.

    python tools/report.py            # byte-identical when rerun on the same files
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mbz.report.report import build  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".", help="repository root holding results/ and examples/")
    ap.add_argument("--out", default="REPORT.md", help="relative to --root")
    a = ap.parse_args()
    print(build(a.root, a.out))


if __name__ == "__main__":
    main()
