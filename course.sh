#!/usr/bin/env bash
# tl-course: the two commands of the README.
#   bash course.sh lab    set up .venv (first run) and open the course in JupyterLab
#   bash course.sh test   set up .venv (first run) and run every unit test and notebook (smoke)
#   bash course.sh claims run every notebook in the cpu profile and fail if a claim fails
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV=".venv"

# setup EXTRA: the course and what running the notebooks needs; EXTRA "[dev]" adds the
# test tools (pytest, nbval, playwright, ruff), which a student never needs.
setup() {
  local extra="${1:-}"
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
  want="$( (cat pyproject.toml; echo "$extra") | "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing tl-course and its dependencies into $VENV (first time: several minutes) ..."
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # An already installed torch / torchvision inside the declared range is kept (e.g. a
    # CPU-only build installed first from the PyTorch index): pip only replaces it if needed.
    "$VENV/bin/python" -m pip install --quiet -e ".$extra"
    echo "$want" > "$stamp"
  fi
}

# The slide and JupyterLab tests drive a real headless Chromium and build reveal.js from
# npm. On Debian / Ubuntu as root (CI) they are installed here; elsewhere we say what to do.
browser_deps() {
  local missing=()
  [ -x "${TL_COURSE_CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} for the browser tests ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: the slide / JupyterLab tests need ${missing[*]} (e.g. sudo apt-get install ${missing[*]};" \
         "or set TL_COURSE_CHROMIUM=/path/to/chromium); without them those tests fail." >&2
  fi
}

case "${1:-}" in
  lab)
    setup ""
    shift
    exec "$VENV/bin/jupyter" lab notebooks/ "$@"
    ;;
  test)
    setup "[dev]"
    browser_deps
    shift
    # Smoke profile: seconds per notebook, offline. One thread per worker so two
    # notebook kernels on two cores do not fight; loadscope keeps a notebook on one worker.
    export TL_COURSE_PROFILE=smoke OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg
    "$VENV/bin/ruff" check tl_course tests benchmarks notebooks
    exec "$VENV/bin/python" -m pytest -n 2 --dist loadscope "$@"
    ;;
  claims)
    setup "[dev]"
    shift
    # Each notebook once in the cpu profile (offline it uses the 5,000-digit sample), with
    # its claims enforced. SEED picks the session seed (default 0). Two cores, one kernel.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MPLBACKEND=Agg
    exec "$VENV/bin/tl-course" run notebooks/[0-9][0-9]_*.ipynb --profile cpu \
      --seed "${SEED:-0}" --strict --out runs/claims "$@"
    ;;
  *)
    echo "usage: bash course.sh lab | test | claims" >&2
    exit 2
    ;;
esac
