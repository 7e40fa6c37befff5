#!/usr/bin/env bash
# tl-course: the README's commands (the work is done by course.py, which also runs on Windows).
#   bash course.sh lab [--kit DIR]  set up .venv (first run) and open the course in JupyterLab
#   bash course.sh setup [--kit DIR] only set up .venv
#   bash course.sh test             set up .venv (first run) and run every unit test and notebook
#   bash course.sh claims           every notebook in the cpu profile; fails if a claim fails
#   bash course.sh mutants [--curated | MODULE...]  planted bugs that no test catches
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "tl-course: error: Python 3.10 or newer is needed (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ $# -eq 0 ]; then
  echo "usage: bash course.sh lab [--kit DIR] | setup [--kit DIR] | test | claims | mutants" >&2
  exit 2
fi
exec "$PYTHON" course.py "$@"
