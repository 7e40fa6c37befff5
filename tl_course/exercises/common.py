"""Feedback helpers shared by every notebook's exercise checks.

Each `check_*` prints feedback and returns True / False; it never raises, so a
notebook with an unfinished exercise still runs top to bottom. An answer left as
`...` (or None) counts as "not attempted yet".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NOT_ATTEMPTED = (
    "Not attempted yet: replace the `...` with your answer and run the cell again "
    "(a worked solution is in the collapsed cell below)."
)


def feedback(ok: bool, success: str, hint: str) -> bool:
    """Print a one-line verdict: the success message or the hint. Returns `ok`."""
    print(f"[correct] {success}" if ok else f"[not yet] {hint}")
    return ok


def attempted(answer: Any) -> bool:
    """False (with a note) when the answer is still the placeholder `...` or None."""
    if answer is ... or answer is None:
        print(f"[todo] {NOT_ATTEMPTED}")
        return False
    return True


def safely(check: Callable[[], bool], what: str) -> bool:
    """Run a check; turn an exception in the learner's code into feedback."""
    try:
        return check()
    except Exception as exc:  # the learner's code may fail in any way: report, don't raise
        return feedback(False, "", f"calling your {what} raised {type(exc).__name__}: {exc}")
