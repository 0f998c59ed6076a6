"""What a model was built from: the git commit of the code and the DVC version of the data."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def git_commit(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def dvc_data_version(root: Path, stage: str, out_path: str) -> str:
    """The content hash DVC recorded in dvc.lock for one stage output (a directory's .dir hash)."""
    lock_file = root / "dvc.lock"
    if not lock_file.exists():
        return "untracked"
    lock = yaml.safe_load(lock_file.read_text()) or {}
    for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
        if out.get("path") == out_path:
            return out.get("md5", "untracked")
    return "untracked"
