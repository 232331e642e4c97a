#!/usr/bin/env bash
# Rebuilds the dashboard (ui/) into ui/dist, which is committed and embedded
# in the tessera binary at compile time (so cargo builds need no npm), and
# records the hash of the sources it was built from in ui/dist/SOURCES.sha256.
# The apiserver's unit test `ui::tests::committed_build_output_matches_the_sources`
# recomputes that hash and fails when ui/dist is stale. Commit ui/dist after
# running this.
set -euo pipefail
cd "$(dirname "$0")/.."

sources_hash() {
  { printf '%s\n' ui/index.html ui/package.json ui/package-lock.json ui/tsconfig.json ui/vite.config.ts
    find ui/src -type f; } | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1
}

if [ "${1:-}" = "--hash" ]; then sources_hash; exit 0; fi

cd ui
[ -d node_modules/vite ] || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
npm run build
cd ..
sources_hash > ui/dist/SOURCES.sha256
echo "ui/dist rebuilt from sources $(cat ui/dist/SOURCES.sha256)"
