#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: unit, integration (real Chroma, real
# model, loopback HTTP) and end-to-end (the openai SDK against a gateway process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
