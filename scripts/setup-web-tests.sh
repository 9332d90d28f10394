#!/usr/bin/env bash
# Installs what the web tests of `weir run --http` need, from package registries only:
#
#   - Prometheus, Chromium, Node.js and npm from Debian (apt-get; CI runs as root),
#   - playwright-core from npm (drives the system Chromium; Playwright's own browser download
#     is never used), pinned in tests/web/package.json, into tests/web/node_modules,
#   - schemathesis from PyPI (fuzzes the API from its OpenAPI document), pinned, into
#     ${WEIR_HOME:-$REPO/.weir}/venv-web.
#
# Idempotent: each part is skipped when it is already there.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
# The physical path: a venv's scripts name the path it was made at.
WEIR_HOME="$(mkdir -p "$WEIR_HOME" && cd -P "$WEIR_HOME" && pwd)"
VENV="$WEIR_HOME/venv-web"
# A venv made at a path that is gone has scripts that cannot start: make it again.
if [ -d "$VENV" ] && ! "$VENV/bin/pip" --version >/dev/null 2>&1; then rm -rf "$VENV"; fi
PY="${PYTHON:-python3}"
PINS=(schemathesis==4.32.5)
STAMP="$VENV/.installed-$(echo "${PINS[*]}" | tr ' ' '_')"

say() { echo "setup-web-tests: $*"; }

missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
say "ok: $(prometheus --version 2>&1 | head -1)"
say "ok: $(chromium --version 2>/dev/null | head -1)"

if [ ! -f "$REPO/tests/web/node_modules/playwright-core/package.json" ]; then
  # No browser download: playwright-core has none, and the tests use /usr/bin/chromium.
  (cd "$REPO/tests/web" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
say "ok: playwright-core $(node -p "require('$REPO/tests/web/node_modules/playwright-core/package.json').version")"

if [ ! -f "$STAMP" ]; then
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
say "ok: $("$VENV/bin/schemathesis" --version 2>&1 | head -1)"
