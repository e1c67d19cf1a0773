#!/usr/bin/env bash
# Two callgate builds side by side, for "does this change regress?": each round runs the load
# bench's --compare mode with one build started by the bench and the other as the peer at a
# fixed loopback address, both in front of the same stubs (another process), their 5-second
# measurements cut into 8 slices taken in turn; the builds swap places every round, so that
# neither gains from its place. Prints each round's B/A ratios and their medians. Not part of CI.
#
#   bash bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]     # ROUNDS default 10, about 40 s each
#
# The ratio to read is the closed loop's calls/s (32 connections, the machine saturated) and
# CPU per call. One round on a shared 2-core VM moves by 5 to 15% (how the 32 connections happen
# to fall on the two call workers, other VMs): take twenty rounds or more for a 2% question.
# AB_DIR keeps each round's report (default a temporary directory); AB_LISTEN is the peer's
# address (default 127.0.0.1:18490, its admin listener on the next port).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,14p' "$0"; exit 2; }
A=$(realpath "$1"); B=$(realpath "$2"); ROUNDS=${3:-10}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
LISTEN="${AB_LISTEN:-127.0.0.1:18490}"
ADMIN="${LISTEN%:*}:$(( ${LISTEN##*:} + 1 ))"
DIR="${AB_DIR:-$(mktemp -d /tmp/callgate-ab.XXXXXX)}"
mkdir -p "$DIR"

LOAD=$(cargo bench --bench load --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\/load-[0-9a-f]*\)).*/\1/p' | tail -1)
[ -x "$LOAD" ] || { echo "ab.sh: cannot find the load bench binary" >&2; exit 1; }

PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
"$LOAD" --stubs-only --stubs-file "$DIR/stubs.env" > "$DIR/stubs.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -f "$DIR/stubs.env" ] && break; sleep 0.1; done
# shellcheck disable=SC1091
. "$DIR/stubs.env"

# The flags the bench gives its own callgate (benches/load/process.rs), for the peer.
peer_flags() {
  local bin=$1
  local flags=(--listen "$LISTEN" --admin-listen "$ADMIN" --upstream "http://$ENGINE" --routes "$ROUTES"
    --allow-insecure-gates --log-format json --twilio-auth-token "$TOKEN" --public-url "$PUBLIC_URL")
  local help; help=$("$bin" --help)
  grep -q -- --signed-path <<<"$help" && flags+=(--signed-path /twilio/status)
  grep -q -- --dedup-window <<<"$help" && flags+=(--dedup-window 0 --breaker-failures 0)
  echo "${flags[@]}"
}

echo "A = $A"
echo "B = $B"
echo "reports in $DIR"
for r in $(seq "$ROUNDS"); do
  if (( r % 2 )); then own=$B; own_name=B; peer=$A; peer_name=A; else own=$A; own_name=A; peer=$B; peer_name=B; fi
  # shellcheck disable=SC2046
  RUST_LOG=info "$peer" $(peer_flags "$peer") > /dev/null 2> "$DIR/peer.log" &
  peer_pid=$!
  PIDS+=("$peer_pid")
  echo "$peer_pid" > "$DIR/peer.pid"
  for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" > /dev/null && break; sleep 0.1; done
  "$LOAD" --bench --callgate "$own" --compare "$LISTEN" --nginx-pid-file "$DIR/peer.pid" \
    --compare-name "$peer_name" --stubs-file "$DIR/stubs.env" > "$DIR/round$r-$own_name.md" 2> "$DIR/round$r.err"
  kill "$peer_pid"; wait "$peer_pid" 2>/dev/null || true
  # The side-by-side table: | load | path | callgate calls/s | peer calls/s | ... | callgate CPU | peer CPU |
  awk -F'|' -v own="$own_name" -v r="$r" '$2 ~ /closed 32 conns/ {
      gsub(/ /, "", $3); cg = $4 + 0; peer = $5 + 0; cgcpu = $9 + 0; peercpu = $10 + 0
      if (own == "B") { ratio = cg / peer; cpu = (peercpu > 0 ? cgcpu / peercpu : 0) }
      else { ratio = peer / cg; cpu = (cgcpu > 0 ? peercpu / cgcpu : 0) }
      printf "round %d (B %s): %s calls/s B/A %.3f, CPU per call B/A %.3f\n", r, (own == "B" ? "own" : "peer"), $3, ratio, cpu
    }' "$DIR/round$r-$own_name.md" | tee -a "$DIR/ratios.txt"
done
echo
echo "medians over $ROUNDS rounds (B/A; above 1 means B does more calls/s, or more CPU per call):"
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for path in reject accept; do
  rows=$(grep "): $path calls/s" "$DIR/ratios.txt" | tr -d ',')
  calls=$(awk '{ print $8 }' <<<"$rows" | median)
  cpu=$(awk '{ print $13 }' <<<"$rows" | median)
  range=$(awk '{ print $8 }' <<<"$rows" | sort -g | sed -n '1p;$p' | paste -sd' ')
  echo "  $path: calls/s $calls, CPU per call $cpu (calls/s ratios from ${range/ / to })"
done
