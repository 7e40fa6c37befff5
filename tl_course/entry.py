"""The `tl-course` console script: the CLI, or, when the course cannot even be imported,
what is wrong with the installed versions and how to fix it (instead of a traceback)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from .cli import main as cli_main
    except Exception as exc:  # a broken or missing dependency, whatever it raises
        from .deps import check_versions

        print(f"tl-course: error: the course cannot be imported ({type(exc).__name__}: "
              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})", file=sys.stderr)
        bad = [c for c in check_versions() if not c.ok]
        for check in bad:
            print(check.line(), file=sys.stderr)
        if not bad:
            print("every dependency is in its declared range; reinstall the course: "
                  'pip install --force-reinstall -e .', file=sys.stderr)
        return 1
    return cli_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
