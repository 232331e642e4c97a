#!/usr/bin/env bash
# Builds `tessera` and `tessera-proxy` (release) and starts `tessera server` on
# its embedded store (./tessera-data unless --data-dir says otherwise); it
# prints where its kubeconfig is. Installs the
# one build tool the default build needs and a fresh machine lacks: protoc
# (the etcd backend compiles its protocol definitions with it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1 && [ -z "${PROTOC:-}" ]; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "installing: protobuf-compiler (protoc)" >&2
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq protobuf-compiler
fi
# Both binaries: `tessera agent run --mesh` starts the `tessera-proxy` beside
# `tessera`, so a rebuild of one must never leave a stale other.
cargo build --release -p tessera --bins
exec cargo run --release --bin tessera -- server "$@"
