"""Verb: report (REPORT.md and REPORT.pdf from the recorded results)."""
from __future__ import annotations

import os

from .common import output_file

DESCRIPTION = (
    "Write REPORT.md and REPORT.pdf (beside it) from the recorded results: the files that "
    "ROOT/results/index.json lists (baseline, recipe runs, sweep, measurements) and the shipped .mbz "
    "files in ROOT/examples/. Nothing is trained or evaluated: every number is read from a file, so the "
    "report takes seconds and rerunning it on the same files gives byte-identical REPORT.md, REPORT.pdf "
    "and charts. The charts (PNG) go to ROOT/results/figures/ unless --figures names another folder; "
    "REPORT.md links to them, REPORT.pdf embeds them. Sizes in the report are bytes of whole files; "
    "accuracies are top-1 in percent on the test split the records name.")


def cmd_report(a) -> int:
    from ..errors import UsageError
    from ..report import report
    root = a.root
    if not os.path.isdir(root):
        raise UsageError(f"{root}: no such folder (--root: the repository root holding results/ and examples/)")
    if not os.path.isdir(os.path.join(root, "results")):
        raise UsageError(f"{root}: holds no results/ folder (--root: the repository root holding results/)")
    out = a.out or os.path.join(root, "REPORT.md")
    if not out.endswith(".md"):
        raise UsageError(f"{out}: the report's name must end in .md (REPORT.pdf is written beside it)")
    o = report.outputs(root, out, a.figures)
    output_file(o["md"], force=a.force)
    output_file(o["pdf"], force=a.force)
    if os.path.exists(o["figures_dir"]) and not os.path.isdir(o["figures_dir"]):
        raise UsageError(f"{o['figures_dir']}: exists and is not a folder (--figures)")
    if os.path.isdir(o["figures_dir"]):
        for p in o["figures"]:
            output_file(p, force=a.force)
    elif not os.path.isdir(os.path.dirname(os.path.abspath(o["figures_dir"]))):
        raise UsageError(f"{o['figures_dir']}: its parent folder does not exist (--figures)")
    written = report.build(root, out, a.figures)
    print(written["md"])
    print(written["pdf"])
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="write REPORT.md and REPORT.pdf from results/", description=DESCRIPTION)
    p.add_argument("--root", default=".", help="repository root holding results/ and examples/ (default: .)")
    p.add_argument("-o", "--out", default=None,
                   help="the Markdown report to write (default: ROOT/REPORT.md); the PDF goes beside it")
    p.add_argument("--figures", default=None, help="folder for the PNG charts (default: ROOT/results/figures)")
    p.add_argument("--force", action="store_true",
                   help="overwrite REPORT.md, REPORT.pdf and the charts (without it an existing one is refused and "
                        "nothing is written); `mbz report --force` regenerates the report in place")
    p.set_defaults(fn=cmd_report)
