#!/usr/bin/env bash
# callgate against nginx + njs (bench/nginx/) and a Node.js/Express app (bench/node/) doing the
# same job, side by side in one run, on loopback: the same stub gate and engine behind all three,
# the same signed Twilio requests, the same load generator (benches/load.rs). Not part of CI.
#
#   bash bench/compare.sh            # about 1.5 minutes
#   bash bench/compare.sh --quick    # a smoke run, 1 s per measurement
#
# Needs root for apt-get if nginx or its njs module is missing (Debian packages nginx and
# libnginx-mod-http-js), and node and npm (Node.js 18 or later) with the npm registry for
# bench/node's packages (express, twilio). NGINX_LISTEN and NODE_LISTEN pick the loopback
# addresses (default 127.0.0.1:18480 and 127.0.0.1:18481); CALLGATE_BIN a callgate binary to use
# instead of building target/release/callgate.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
NGINX_LISTEN="${NGINX_LISTEN:-127.0.0.1:18480}"
NODE_LISTEN="${NODE_LISTEN:-127.0.0.1:18481}"
EXTRA=("$@")

if ! command -v nginx >/dev/null || [ ! -f /usr/lib/nginx/modules/ngx_http_js_module.so ]; then
  echo "==> installing nginx and njs (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx libnginx-mod-http-js
fi
echo "==> $(nginx -v 2>&1), njs $(dpkg-query -W -f='${Version}' libnginx-mod-http-js 2>/dev/null || echo '?')"
command -v node >/dev/null && command -v npm >/dev/null || { echo "compare.sh: needs node and npm" >&2; exit 1; }
echo "==> node $(node --version): installing bench/node's packages (npm ci)"
npm ci --prefix bench/node --no-audit --no-fund --silent

echo "==> building callgate (release) and the load bench"
if [ -z "${CALLGATE_BIN:-}" ]; then
  cargo build --release --bin callgate
  CALLGATE_BIN="$CARGO_TARGET_DIR/release/callgate"
fi
LOAD=$(cargo bench --bench load --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\/load-[0-9a-f]*\)).*/\1/p' | tail -1)
[ -x "$LOAD" ] || { echo "compare.sh: cannot find the load bench binary" >&2; exit 1; }

RUN=$(mktemp -d /tmp/callgate-compare.XXXXXX)
chmod 755 "$RUN"   # nginx workers run as nobody
STUBS_PID=""
NODE_PID=""
cleanup() {
  if [ -f "$RUN/nginx.pid" ]; then kill -QUIT "$(cat "$RUN/nginx.pid")" 2>/dev/null || true; fi
  if [ -n "$NODE_PID" ]; then kill "$NODE_PID" 2>/dev/null || true; fi
  if [ -n "$STUBS_PID" ]; then kill "$STUBS_PID" 2>/dev/null || true; fi
  sleep 0.5
  rm -rf "$RUN"
}
trap cleanup EXIT

echo "==> starting the stub gate and engine"
"$LOAD" --stubs-only --stubs-file "$RUN/stubs.env" &
STUBS_PID=$!
for _ in $(seq 100); do [ -f "$RUN/stubs.env" ] && break; sleep 0.1; done
[ -f "$RUN/stubs.env" ] || { echo "compare.sh: the stubs did not start" >&2; exit 1; }
# shellcheck disable=SC1091
. "$RUN/stubs.env"   # GATE, ENGINE, DEAD, ROUTES, TOKEN, PUBLIC_URL

echo "==> starting nginx + njs on $NGINX_LISTEN (gate $GATE, engine $ENGINE)"
render() {
  sed -e "s|@RUN@|$RUN|g" -e "s|@GATE@|$GATE|g" -e "s|@ENGINE@|$ENGINE|g" \
      -e "s|@LISTEN@|$NGINX_LISTEN|g" -e "s|@ROUTES@|$ROUTES|g" \
      -e "s|@TOKEN@|$TOKEN|g" -e "s|@PUBLIC_URL@|$PUBLIC_URL|g" "$1" > "$2"
}
render bench/nginx/nginx.conf "$RUN/nginx.conf"
render bench/nginx/callgate.js "$RUN/callgate.js"
nginx -q -t -p "$RUN" -c "$RUN/nginx.conf"
nginx -p "$RUN" -c "$RUN/nginx.conf"
for _ in $(seq 50); do [ -f "$RUN/nginx.pid" ] && break; sleep 0.1; done

echo "==> starting node + express on $NODE_LISTEN"
LISTEN="$NODE_LISTEN" ENGINE="$ENGINE" ROUTES="$ROUTES" TOKEN="$TOKEN" PUBLIC_URL="$PUBLIC_URL" \
  LOG="$RUN/node-decisions.log" node bench/node/server.js &
NODE_PID=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://$NODE_LISTEN/healthz" && break
  sleep 0.1
done

echo "==> running the identical load against callgate, nginx + njs and node + express"
"$LOAD" --compare "$NGINX_LISTEN" --stubs-file "$RUN/stubs.env" --nginx-pid-file "$RUN/nginx.pid" \
  --node "$NODE_LISTEN" --node-pid "$NODE_PID" --callgate "$CALLGATE_BIN" "${EXTRA[@]}"

sleep 1.2   # nginx flushes its buffered decision log every second
echo
echo "nginx + njs decision lines logged: $(grep -c '"call decided"' "$RUN/decisions.log" 2>/dev/null || echo 0)"
echo "node + express decision lines logged: $(grep -c '"call decided"' "$RUN/node-decisions.log" 2>/dev/null || echo 0)"
if grep -q '\[error\]\|\[crit\]\|\[alert\]' "$RUN/error.log" 2>/dev/null; then
  echo "nginx errors (first 5):"
  grep '\[error\]\|\[crit\]\|\[alert\]' "$RUN/error.log" | head -5
fi
