#!/usr/bin/env bash
# The test suite: lint, template checks, then pytest (which starts mosquitto and moto itself).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
if [ -f template.yaml ]; then cfn-lint template.yaml; fi
exec python -m pytest -q "$@"
