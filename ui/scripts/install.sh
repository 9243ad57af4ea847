#!/usr/bin/env bash
# Install the UI's dependencies from package-lock.json. npm 11 refuses `npm ci` when the lock
# lacks rollup's optional native packages for other platforms, which this registry's npm leaves
# out (npm/cli#4828); then install the same pinned versions without rewriting the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --no-audit --no-fund --loglevel=error 2>/dev/null ||
  npm install --no-audit --no-fund --no-package-lock --loglevel=error
