#!/usr/bin/env bash
# Install memgate into ./.venv, once: again only when pyproject.toml, constraints.txt (the
# pinned runtime dependencies, the same the Docker image gets) or this script changes
# (a stamp in .venv records what was installed). Modes:
#   serve (default)  the gateway with its default embedder (int8 ONNX): no torch
#   torch            also the torch extra (embedder.backend = "torch"): PyTorch's CPU build
#                    first, from PyTorch's CPU index (PyPI's Linux x86-64 torch is the CUDA
#                    build, with GBs of dependencies), from the default index when that one
#                    cannot be reached; then sentence-transformers and the full model
#   test             the torch extra (both backends are tested) and the test tools: the Python
#                    test extras, Debian's chromium (the inspector page test; never a browser
#                    download) and redis-server (the fleet rate-limit test starts its own on
#                    loopback), each only if missing, and the Node SDK test's pinned packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
MODE="${1:-serve}"
case "$MODE" in
    serve | torch | test) ;;
    *) echo "usage: scripts/install.sh [serve|torch|test]" >&2; exit 2 ;;
esac
TORCH="torch==2.13.0"
STAMP=".venv/.memgate-installed-$MODE"
WANT="$(cat pyproject.toml constraints.txt scripts/install.sh | sha256sum | cut -d' ' -f1)"

if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
    && { [ "$MODE" != test ] || { command -v chromium && command -v redis-server \
         && [ -d tests/node/node_modules ]; } >/dev/null 2>&1; }; then
    exit 0  # installed, and nothing changed since
fi
echo "memgate: installing into .venv ($MODE; once, until pyproject.toml changes)..." >&2
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip -qq --disable-pip-version-check)
"${PIP[@]}" install --upgrade pip
# constraints.txt pins every runtime dependency (chromadb the Chroma server image's version)
INSTALL=("${PIP[@]}" install -c constraints.txt)
if [ "$MODE" != serve ]; then
    # torch alone (its own dependencies come with the extra's, from the default index, pinned:
    # PyTorch's index need not hold those versions)
    if ! "${INSTALL[@]}" --no-deps --index-url https://download.pytorch.org/whl/cpu \
            --timeout 20 --retries 1 "$TORCH" 2>/dev/null; then
        echo "memgate: PyTorch's CPU index cannot be reached: $TORCH from the default index" >&2
        "${INSTALL[@]}" --no-deps "$TORCH"
    fi
fi
if [ "$MODE" = "test" ]; then
    "${INSTALL[@]}" --config-settings editable_mode=compat -e ".[test,torch]"
    # Only what is missing, each on its own: Debian's nodejs already bundles npm, and asking
    # apt for both at once is refused ("nodejs : Conflicts: npm").
    missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "install Debian's ${missing[*]} (apt-get install ${missing[*]})" >&2
            exit 1
        fi
        apt-get update -qq
        for pkg in "${missing[@]}"; do
            if ! command -v "${pkg/nodejs/node}" >/dev/null 2>&1; then
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
            fi
        done
    fi
    npm ci --prefix tests/node --no-audit --no-fund --silent
elif [ "$MODE" = "torch" ]; then
    "${INSTALL[@]}" --config-settings editable_mode=compat -e ".[torch]"
else
    "${INSTALL[@]}" --config-settings editable_mode=compat -e .
fi
echo "$WANT" > "$STAMP"
echo "memgate: installed; its command line is .venv/bin/memgate" \
    "(export PATH=\"\$PWD/.venv/bin:\$PATH\" puts memgate on PATH)" >&2
