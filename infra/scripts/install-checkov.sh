#!/usr/bin/env bash
# Install checkov into its own virtualenv and print the path of its executable.
# Its exact pins (boto3==1.35.49, packaging<24, networkx<2.7, ...) conflict with the project's
# dependencies, so it cannot live in .venv or the dev extras. Idempotent: reuses the venv when
# that version is already installed there (about 50 s the first time, needs PyPI).
#   venv: $CHECKOV_VENV, default ${XDG_CACHE_HOME:-~/.cache}/cyclegan/checkov-VERSION
# tests/test_infra.py looks for checkov in $CHECKOV, then in that default venv, then on PATH.
set -euo pipefail
infra="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
want="$(sed -n 's/^checkov==//p' "$infra/scripts/requirements-checkov.txt")"
venv="${CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cyclegan/checkov-$want}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/checkov" ] || [ "$("$venv/bin/checkov" --version 2>/dev/null)" != "$want" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$infra/scripts/requirements-checkov.txt" >&2
fi
echo "$venv/bin/checkov"
