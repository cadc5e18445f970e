#!/usr/bin/env bash
# The project's test command (see README): set up what the tests need, then run them headless.
#
#   bash tools/test.sh [pytest arguments...]
#
# 1. apt: Xvfb + the xcb/GL/font libraries Qt and vispy need (skipped when all are installed;
#    installing needs root or sudo).
# 2. pip: torch==2.13.0 first (CPU build; an unpinned `torch` could pull a multi-GB CUDA build) —
#    skipped when some torch is already importable — then this project with its [testing] extra
#    (skipped when pyproject.toml is unchanged since the last successful install).
# 3. `xvfb-run -a python -m pytest`; the exit status is pytest's.
#
# Python: $PYTHON if set, else `python` (or `python3`) when pip may install into it; a
# Debian-managed system Python (PEP 668 "externally managed") gets a virtual environment in .venv
# instead. STARLOC_SKIP_INSTALL=1 skips steps 1-2.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."


APT_PACKAGES=(
    xvfb xauth libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 libdbus-1-3 libfontconfig1
    fonts-dejavu-core libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
    libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxcb-xinerama0 libxcb-cursor0
)

log() { printf '[tools/test.sh] %s\n' "$*" >&2; }

install_system_packages() {
    local missing=() pkg
    if command -v dpkg-query >/dev/null 2>&1; then
        for pkg in "${APT_PACKAGES[@]}"; do
            if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
                missing+=("$pkg")
            fi
        done
    elif ! command -v xvfb-run >/dev/null 2>&1; then
        log "no dpkg and no xvfb-run: install Xvfb and the xcb/GL libraries by hand"
        exit 1
    fi
    if ((${#missing[@]} == 0)); then
        return
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            log "missing system packages (${missing[*]}); run as root or install them with apt-get"
            exit 1
        fi
    fi
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python_packages() {
    local stamp_dir=build stamp want
    stamp="$stamp_dir/.tools-test-installed"
    if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
        log "pip install torch==2.13.0"
        "$PYTHON" -m pip install -q torch==2.13.0
    fi
    want="$("$PYTHON" -c 'import sys; print(sys.executable)') $(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
        && "$PYTHON" - <<'EOF' >/dev/null 2>&1
import importlib.metadata, pathlib, starloc, napari, npe2, pytest, pytestqt  # noqa: F401
assert pathlib.Path(starloc.__file__).resolve().parent == pathlib.Path("src/starloc").resolve()
importlib.metadata.distribution("napari-starloc")
EOF
    then
        return
    fi
    log "pip install -e .[testing]"
    "$PYTHON" -m pip install -q -e ".[testing]"
    mkdir -p "$stamp_dir"
    echo "$want" >"$stamp"
}

pip_may_install() {  # true unless $1 is a PEP 668 "externally managed" Python outside a venv
    "$1" - <<'EOF' >/dev/null 2>&1
import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(1 if managed and sys.prefix == sys.base_prefix else 0)
EOF
}

choose_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        return
    fi
    local candidate
    for candidate in python python3; do
        if command -v "$candidate" >/dev/null 2>&1; then
            if pip_may_install "$candidate"; then
                PYTHON=$candidate
                return
            fi
            break
        fi
    done
    if [[ ! -x .venv/bin/python ]]; then
        log "system Python is externally managed: creating a virtual environment in .venv"
        if ! python3 -m venv .venv; then
            rm -rf .venv
            APT_PACKAGES+=(python3-venv)
            install_system_packages
            python3 -m venv .venv
        fi
    fi
    PYTHON=.venv/bin/python
}

if [[ "${STARLOC_SKIP_INSTALL:-0}" != 1 ]]; then
    install_system_packages
    choose_python
    install_python_packages
else
    PYTHON=${PYTHON:-python}
fi

# Keep stray GUI/plotting settings of the caller from leaking in; xvfb-run provides DISPLAY.
unset QT_QPA_PLATFORM
export MPLBACKEND=Agg
# The [gui] extra installs PyQt6. An environment that still has PyQt5 from before would give
# qtpy (napari) PyQt5 and pytest-qt PyQt6 in one process; pin both to the binding we install.
export QT_API="${QT_API:-pyqt6}" PYTEST_QT_API="${PYTEST_QT_API:-${QT_API:-pyqt6}}"
log "xvfb-run -a $PYTHON -m pytest $*"
# -p no:xvfb: xvfb-run already provides the display, pytest-xvfb need not start a second one.
exec xvfb-run -a -s "-screen 0 1280x1024x24" "$PYTHON" -m pytest -p no:xvfb "$@"
