"""wandb without friction: offline unless logged in, and replay of recorded JSONL runs.

`mode()` picks WANDB_MODE if set, else "online" when an API key is found
(WANDB_API_KEY or ~/.netrc from `wandb login`), else "offline": runs are then
written under ./wandb and `wandb sync wandb/offline-run-*` uploads them later.
wandb is imported only inside these functions, so GPU machines without it
can import the pipeline.
"""
from __future__ import annotations

import netrc
import os

SUMMARY_KEYS = ("top1", "drop", "baseline_top1", "file_bytes", "file_kb", "file_mb", "model_cr", "weight_cr",
                "act_cr", "act_cr_peak", "top1_qat_eval")


def logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def mode(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if logged_in() else "offline"


def flat_metrics(row: dict) -> dict:
    """What a run logs: the figures, bytes by category as bytes/<category>, the sweep axes."""
    m = {k: row[k] for k in SUMMARY_KEYS if k in row}
    for cat, n in row.get("categories", {}).items():
        m[f"bytes/{cat}"] = n
    return m


def log_run(run, row: dict, history: list[dict], model_file: str | None) -> None:
    """Log one recorded run into an open wandb run: per-epoch history, summary figures, the .mbz artifact."""
    import wandb
    for h in history:
        run.log({f"train/{k}": v for k, v in h.items() if k not in ("run", "epoch")} | {"epoch": h["epoch"]})
    for k, v in flat_metrics(row).items():
        run.summary[k] = v
    if model_file and os.path.exists(model_file):
        art = wandb.Artifact(f"mbz-{row['name']}".replace(".", "_"), type="model",
                             metadata={"file_bytes": row.get("file_bytes"), "top1": row.get("top1")})
        art.add_file(model_file)
        run.log_artifact(art)


def replay(rows: list[dict], histories: dict, out_dir: str, project: str, group: str,
           requested_mode: str = "auto", wandb_dir: str | None = None) -> list[str]:
    """Write one wandb run per recorded row (JSONL from GPU machines). Returns the run directories."""
    import wandb
    m = mode(requested_mode)
    dirs = []
    for row in rows:
        run = wandb.init(project=project, group=group, name=row["name"], config=row["config"], mode=m,
                         dir=wandb_dir, reinit="finish_previous", job_type="sweep-replay",
                         settings=wandb.Settings(silent=True, console="off"))
        log_run(run, row, histories.get(row["name"], []), os.path.join(out_dir, row["mbz"]))
        dirs.append(run.dir)
        run.finish()
    return dirs
