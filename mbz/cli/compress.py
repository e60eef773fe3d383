"""`mbz compress --recipe FILE --out DIR`: a recipe's prune -> restart -> QAT -> soup -> reduce chain, in stages."""
from __future__ import annotations

from .common import input_file, output_dir


def cmd_compress(a) -> int:
    from ..pipeline.recipe import load_recipe
    from ..pipeline.stages import Compress
    input_file(a.recipe, "recipe")
    recipe = load_recipe(a.recipe)
    output_dir(a.out, create=False)  # its parent must exist; the folder is made once the recipe's inputs are checked
    if a.status:  # reads the folder only; a folder a run would refuse is refused the same way
        for name, state in Compress(recipe, a.out, force=a.force).status():
            print(f"{name:<40} {state}")
        return 0
    job = Compress(recipe, a.out, force=a.force, time_budget=a.time_budget)
    r = job.run()
    for m in r["summary"]["models"]:
        print(f"{m['file']:<48} {m['file_bytes']:>10,} B  top-1 {m['top1']:6.2f} ({m.get('device', '?')})")
    if r["complete"]:
        print(f"compress: every stage of {recipe.file} done in {a.out} (summary.json, manifest.json)", flush=True)
    else:
        print(f"compress: stopped by the time budget in {r['stopped_in']}; run the same command again to continue",
              flush=True)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "compress", help="run a recipe: baseline -> prune -> restart -> QAT -> soup -> reduce (resumable)",
        description="Run the recipe FILE (YAML holding every setting: data, model, baseline, pruning chain, restart "
                    "cycles, QAT runs, soup, reduction, seeds; see recipes/ and docs/pipeline.md) into the folder "
                    "DIR, one stage after another: DIR/baseline/ (when the recipe trains it), DIR/prune/s<S>.mbz, "
                    "DIR/restart/, DIR/qat/NAME.mbz, DIR/soup/, DIR/reduce/NAME.mbz, or DIR/sweep/ for a sweep "
                    "recipe; every epoch in DIR/train_log.jsonl, the stages in DIR/manifest.json, the models' "
                    "bytes and top-1 (on the training device) in DIR/summary.json. Every .mbz made records the "
                    "recipe (file name, sha256 of its text, its content) under the metadata key 'recipe'. A finished "
                    "stage is never run again: with --time-budget the run stops cleanly between epochs or stages "
                    "and the same command continues, so a GPU can do it in commands of 10 minutes. A recipe changed "
                    "after a stage ran is refused for that DIR unless --force (which redoes the stages whose "
                    "settings changed and the ones after them).")
    p.add_argument("--recipe", required=True, metavar="FILE", help="the recipe (YAML), e.g. recipes/mnv2_400k.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (made if missing; its parent must exist)")
    p.add_argument("--time-budget", type=float, default=0, metavar="SECONDS",
                   help="stop between epochs / stages before this many seconds (e.g. 540 in a 600-s command; "
                        "0: no limit)")
    p.add_argument("--status", action="store_true", help="print each stage's state in DIR and exit (runs nothing)")
    p.add_argument("--force", action="store_true",
                   help="accept a recipe changed since DIR was made (redo the stages that differ), or a non-empty "
                        "DIR that has no manifest")
    p.set_defaults(fn=cmd_compress)
