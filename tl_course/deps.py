"""The installed versions of the course's dependencies against the ranges it declares.

Imports only the standard library and `packaging`: it must work when torch, numpy or
scikit-learn is missing or broken, which is when a learner needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class Check:
    """One line of a report: ok or not, what was found, and the fix when not ok."""

    ok: bool
    what: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok " if self.ok else "!! "
        return mark + self.what + ("" if self.ok or not self.fix else f"  -> {self.fix}")


def check_versions(package: str = "tl-course") -> list[Check]:
    """One Check per dependency (not the dev extra): installed and inside its range?"""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a dependency too; pip carries a copy in every environment
        from pip._vendor.packaging.requirements import Requirement

    checks = []
    for spec in metadata.requires(package) or []:
        req = Requirement(spec)
        if req.marker is not None:  # extras such as [dev]
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            checks.append(Check(False, f"{req.name} is not installed", f'pip install "{req}"'))
            continue
        ok = req.specifier.contains(installed, prereleases=True)
        checks.append(Check(ok, f"{req.name} {installed} (needs {req.specifier or 'any'})",
                            f'pip install "{req}"'))
    return checks
