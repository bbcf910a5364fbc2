#!/usr/bin/env bash
# Install what agentid needs on Debian 12, only what is missing. Idempotent; run as root.
#   scripts/deps.sh build   - compilers and -dev libraries, and the chat UI's npm packages
#                             (src/demo/web: msal-browser, served by agentid chat-agent)
#   scripts/deps.sh check   - plus test tools, the npm packages of tests/clients, and Debian's
#                             chromium with certutil (libnss3-tools) for the browser tests,
#                             tmux for driving the agent CLI through a terminal
set -euo pipefail
cd "$(dirname "$0")/.."

want=(build-essential pkg-config libssl-dev libmicrohttpd-dev libgnutls28-dev libcurl4-openssl-dev libhttp-parser-dev
      libjansson-dev libyaml-dev openssl curl ca-certificates
      nodejs npm)
if [ "${1:-build}" = check ]; then
  want+=(libcmocka-dev clang libclang-rt-14-dev chromium libnss3-tools tmux)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# A machine may bring its own node/npm outside Debian's packages; accept those.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=(); for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || filtered+=("$p"); done
  missing=("${filtered[@]}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-build}" = check ] && [ -f tests/clients/package-lock.json ]; then
  stamp=tests/clients/node_modules/.agentid-lock
  if [ ! -f "$stamp" ] || ! cmp -s tests/clients/package-lock.json "$stamp"; then
    (cd tests/clients && npm ci --no-audit --no-fund --loglevel=error)
    cp tests/clients/package-lock.json "$stamp"
  fi
fi

# npm ci in DIR when its node_modules is missing or was installed from another lockfile.
npm_ci() {
  local stamp=$1/node_modules/.agentid-lock
  if [ ! -f "$stamp" ] || ! cmp -s "$1/package-lock.json" "$stamp"; then
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$1/package-lock.json" "$stamp"
  fi
}
if [ -f src/demo/web/package-lock.json ]; then
  npm_ci src/demo/web
fi
