#!/usr/bin/env bash
# tl-course: the two commands of the README.
#   bash course.sh lab    set up .venv (first run) and open the course in JupyterLab
#   bash course.sh test   set up .venv (first run) and run every unit test and notebook (smoke)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=".venv"

setup() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "tl-course: error: Python 3.10 or newer is needed (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.x" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV ..."
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall only when the dependency list changed since the last install.
  local stamp="$VENV/.tl-course-installed" want
  want="$(cat pyproject.toml | "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing tl-course and its dependencies into $VENV (first time: several minutes) ..."
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
    echo "$want" > "$stamp"
  fi
}

case "${1:-}" in
  lab)
    setup
    shift
    exec "$VENV/bin/jupyter" lab notebooks/ "$@"
    ;;
  test)
    setup
    shift
    # Smoke profile: seconds per notebook, offline. One thread per worker so two
    # notebook kernels on two cores do not fight; loadscope keeps a notebook on one worker.
    export TL_COURSE_PROFILE=smoke OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
    "$VENV/bin/ruff" check tl_course tests benchmarks notebooks
    exec "$VENV/bin/python" -m pytest -n 2 --dist loadscope "$@"
    ;;
  *)
    echo "usage: bash course.sh lab | test" >&2
    exit 2
    ;;
esac
