"""The stage contract shared by every flow: a report on disk, and DVC deciding what is stale."""

from __future__ import annotations

import json
from contextlib import chdir, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPORTS_DIR = Path("reports")


@dataclass
class StageReport:
    stage: str
    seconds: float
    records_in: int | None = None
    records_out: int | None = None
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    reused: bool = False

    def write(self, root: Path) -> None:
        path = root / REPORTS_DIR / f"{self.stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, root: Path, stage: str) -> StageReport | None:
        path = root / REPORTS_DIR / f"{stage}.json"
        return cls(**json.loads(path.read_text())) if path.exists() else None


@contextmanager
def dvc_repo(root: Path):
    """DVC's Repo resolves some output paths against the working directory, so work from the root."""
    from dvc.repo import Repo

    with chdir(root), Repo(str(root)) as repo:
        yield repo


def stale_stages(root: Path, stages: list[str]) -> set[str]:
    """Stages whose deps, params, code or outputs changed since DVC last recorded them."""
    with dvc_repo(root) as repo:
        status = repo.status(targets=stages)
    return {key.split(":")[-1] for key in status}


def record_stage(root: Path, stage: str) -> None:
    """Write the stage's deps and outs hashes into dvc.lock and its outs into the DVC cache."""
    with dvc_repo(root) as repo:
        repo.commit(stage, force=True)


def push_outputs(root: Path) -> int:
    """Push cached outputs to the default remote (PHI-zone outputs are marked push: false)."""
    with dvc_repo(root) as repo:
        return repo.push()
