"""Run cards: the key numbers a notebook records, collected by `tl-course run`.

`record(name, value)` prints the number and, when `TL_COURSE_RUNCARD` names a file
(the CLI sets it for the notebook's kernel), adds it to that JSON file. Sections a
run had to skip (e.g. no ImageNet weights offline) are noted with `record_skip`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RUNCARD_ENV = "TL_COURSE_RUNCARD"


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` via a temp file in the same folder, then rename: a reader
    never sees half a file, and an interrupted write leaves no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def merge_into_card(path: Path, update: Mapping[str, Any]) -> None:
    """Merge `update` into the JSON object at `path`, written atomically."""
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for key, value in update.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data.setdefault(key, []).extend(value)
    write_text_atomic(path, json.dumps(data, indent=2))


def card_path(env: Mapping[str, str] | None) -> Path | None:
    """The run card file `TL_COURSE_RUNCARD` names (set by `tl-course run`), or None."""
    env = os.environ if env is None else env
    return Path(env[RUNCARD_ENV]) if env.get(RUNCARD_ENV) else None


def record(name: str, value: float, env: Mapping[str, str] | None = None) -> float:
    """Record a key number of this run (printed, and kept in the run card); return it."""
    if not name.isidentifier():
        raise ValueError(f"metric names must be identifiers like 'cnn_test_acc', got {name!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"metric {name!r} is {value}; record finite numbers only")
    print(f"recorded {name} = {value:.4f}")
    path = card_path(env)
    if path is not None:
        merge_into_card(path, {"metrics": {name: value}})
    return value


def record_skip(section: str, reason: str, env: Mapping[str, str] | None = None) -> None:
    """Note that `section` was skipped and why (printed, and listed in the run card)."""
    print(f"skipped section {section!r}: {reason}")
    path = card_path(env)
    if path is not None:
        merge_into_card(path, {"skipped": [{"section": section, "reason": reason}]})


def read(path: str | os.PathLike) -> dict[str, Any]:
    """What a run recorded: {"metrics": {...}, "skipped": [...], "claims": [...],
    "session": {...}} (empty parts when none)."""
    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {}
    return {"metrics": data.get("metrics", {}), "skipped": data.get("skipped", []),
            "claims": data.get("claims", []), "session": data.get("session", {})}
