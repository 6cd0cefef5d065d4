#!/usr/bin/env bash
# Create .venv with rsz and everything its tests, training and export need (idempotent).
# torch==2.13.0 first: on this kind of machine pip takes that CPU build from local disk; an open
# range would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.rsz-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  # open_clip (rsz-export clip) without torchvision: see the dev extra in pyproject.toml
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "open-clip-torch>=3.0"
  touch "$stamp"
fi
# The native preprocessing of cpp_plugins/ (CPU path): rsz-infer --preprocess auto uses it when built.
if command -v g++ >/dev/null && command -v make >/dev/null; then
  make -s -C cpp_plugins cpu
fi
