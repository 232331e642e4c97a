#!/usr/bin/env bash
# Runs every test: installs what the end-to-end tests need (kubectl must be on
# PATH already; curl comes from Debian), then the whole workspace suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is required on PATH for the end-to-end tests" >&2; exit 1; }
# PyJWT checks our tokens against the published JWKS with an independent JWT library.
python3 -c 'import jwt, cryptography' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check 'PyJWT[crypto]>=2.9,<3'


# Seed 001's services are examples of tessera-auth; the end-to-end tests run them.
cargo build --examples -p tessera-auth

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi
