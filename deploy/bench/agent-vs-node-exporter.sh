#!/usr/bin/env bash
# Per-scrape cost of one container's view from the lookout agent, against one scrape of
# prometheus-node-exporter (default collectors) on the same host.
#
# Starts ONE container (a real runc container by default: busybox `sleep 3600`, 256 MiB
# memory limit, 0.5 CPU quota, private `runc --root`), the agent (cache_ttl = 0 s: every
# request collects) and node_exporter on 127.0.0.1. For each server and each encoding
# (identity, gzip) it sends SCRAPES requests over ONE keep-alive connection (one curl
# invocation) and reports the server's CPU time per scrape (utime+stime of the process from
# /proc/<pid>/stat, before/after, ÷ scrapes), latency p50/p90/p99 and response size.
# Reports against the target: one container's scrape costs < 1/20 of a node_exporter scrape.
# Then it splits the agent's cost: GET /healthz (TLS + HTTP only), and the view served from
# the snapshot cache of a second agent with cache_ttl 60 s (render + send, no collection).
#
# It reports; it asserts nothing about timing. Exit 0 when the measurement completed.
# Everything it creates (processes, cgroups, runc state, temp files) is removed on exit.
#
# Environment (defaults):
#   SCRAPES=2000      requests per server and encoding
#   TIME_LIMIT=120    seconds each batch may take (the batch stops by itself after that)
#   WARMUP=50         requests per server before measuring
#   MODES="plain gzip"  encodings: plain = no Accept-Encoding, gzip = Accept-Encoding: gzip
#   CONTAINER=runc    runc | cheap (real cgroups + sleep + runc-style state.json, no runc)
#   HTTP=1.1          HTTP version to the agent: 1.1 (as Prometheus, and as node_exporter
#                     is scraped here) or 2 (curl's default over TLS)
#   PROFILE=0         1: afterwards, profile the agent over one more batch with `perf`
#                     (context switches per scrape, top symbols); not part of the figures
#   LOOKOUT_BIN=<repo>/target/release/lookout   AGENT_PORT=19164   NE_PORT=19100
set -euo pipefail
# shellcheck source=deploy/bench/lib.sh
. "$(dirname "$0")/lib.sh"

SCRAPES=${SCRAPES:-2000}
TIME_LIMIT=${TIME_LIMIT:-120}
WARMUP=${WARMUP:-50}
MODES=${MODES:-plain gzip}
CONTAINER=${CONTAINER:-runc}

# --- prerequisites ------------------------------------------------------------------------------
need_root
need_lookout
need curl curl
need openssl openssl
need jq jq
need prometheus-node-exporter prometheus-node-exporter
need timeout coreutils
need getconf libc-bin
if [ "${PROFILE:-0}" = 1 ]; then need perf linux-perf; fi
case "$CONTAINER" in
runc)
  need runc runc
  need_static_busybox
  ;;
cheap)
  need_v1_hybrid
  SLEEP_BIN=${SLEEP_BIN:-/bin/sleep}
  [ -x "$SLEEP_BIN" ] || die "$SLEEP_BIN missing — install it: apt-get install -y coreutils"
  ;;
*) die "CONTAINER must be runc or cheap, not '$CONTAINER'" ;;
esac
for p in "$AGENT_PORT" "$NE_PORT"; do
  port_free "$p" || die "127.0.0.1:$p is in use (set AGENT_PORT / NE_PORT)"
done
[[ "$SCRAPES" =~ ^[1-9][0-9]*$ && "$TIME_LIMIT" =~ ^[1-9][0-9]*$ && "$WARMUP" =~ ^[0-9]+$ ]] ||
  die "SCRAPES, TIME_LIMIT must be positive integers, WARMUP a non-negative integer"

bench_traps
bench_tmp
gen_certs "$BENCH_TMP"

# --- the container --------------------------------------------------------------------------------
STATE_ROOT=""
case "$CONTAINER" in
runc)
  log "starting a runc container (busybox sleep 3600, 256 MiB, 0.5 CPU)"
  runc_start bench-c1 268435456 50000
  STATE_ROOT=$RUNC_ROOT
  ;;
cheap)
  log "starting a cheap container (cgroups + sleep + state.json)"
  STATE_ROOT=$BENCH_TMP/state
  mkdir -p "$STATE_ROOT"
  cheap_init "lookout-bench-$$"
  cheap_start bench-c1 "$STATE_ROOT" 268435456 50000
  ;;
esac

# --- the servers -----------------------------------------------------------------------------------
log "starting the agent (cache_ttl 0s) and node_exporter"
start_agent "$STATE_ROOT" 0s
wait_until 30 instances_listed 1 ||
  die "the agent did not list the container within 30 s; log: $(tail -20 "$BENCH_TMP/agent.log")"
ID=$(agent_get /v1/instances | jq -r '.[0].id')
start_node_exporter
log "agent pid $AGENT_PID, instance $ID; node_exporter pid $NE_PID"

AGENT_METRICS_URL="$AGENT_URL/v1/instances/$ID/metrics"
NE_METRICS_URL="$NE_URL/metrics"
read -ra AGENT_ARGS <<<"$(agent_curl_args)"

# Shape of the two views (series and bytes of one uncompressed response).
agent_get "/v1/instances/$ID/metrics" >"$BENCH_TMP/agent-view.txt"
curl -sS --fail --max-time 10 "$NE_METRICS_URL" >"$BENCH_TMP/ne-view.txt"
series() { grep -vc '^#' "$1"; }
families() { grep -c '^# TYPE' "$1"; }

# agent_collection: "count sum" of lookout_agent_collection_seconds.
agent_collection() {
  agent_get /metrics | awk '
    /^lookout_agent_collection_seconds_count/ { c = $2 }
    /^lookout_agent_collection_seconds_sum/ { s = $2 }
    END { printf "%d %.9f\n", c, s }'
}

declare -A CPU P50 P90 P99 BYTES N ERR CONNS WALL COLL

# measure NAME MODE PID URL [curl args...]
measure() {
  local name=$1 mode=$2 pid=$3 url=$4
  shift 4
  local args=("$@") cfg=$BENCH_TMP/batch.cfg out=$BENCH_TMP/$name-$mode.out t0 t1 w0 w1 c0 c1 pct
  [ "$mode" = gzip ] && args+=(--compressed)
  if [ "$WARMUP" -gt 0 ]; then
    curl_config_repeat "$cfg" "$url" "$WARMUP"
    curl_batch "$cfg" "$BENCH_TMP/warmup.out" "$TIME_LIMIT" "${args[@]}"
  fi
  curl_config_repeat "$cfg" "$url" "${COUNT:-$SCRAPES}"
  [ "$name" = agent ] && c0=$(agent_collection)
  log "$name/$mode: ${COUNT:-$SCRAPES} requests over one connection (at most ${TIME_LIMIT}s)"
  t0=$(cpu_ticks "$pid")
  w0=$EPOCHREALTIME
  curl_batch "$cfg" "$out" "$TIME_LIMIT" "${args[@]}"
  t1=$(cpu_ticks "$pid")
  w1=$EPOCHREALTIME
  [ "$name" = agent ] && c1=$(agent_collection)
  local key=$name/$mode
  N[$key]=$(awk '$1 == 200' "$out" | wc -l)
  ERR[$key]=$(awk '$1 != 200' "$out" | wc -l)
  CONNS[$key]=$(awk '{ s += $4 } END { print s + 0 }' "$out")
  WALL[$key]=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.1f", b - a }')
  if [ "${N[$key]}" -eq 0 ]; then
    log "WARNING: $key: no successful request (see $out)"
    CPU[$key]=- P50[$key]=- P90[$key]=- P99[$key]=- BYTES[$key]=- COLL[$key]=-
    return 0
  fi
  CPU[$key]=$(awk -v d=$((t1 - t0)) -v n="${N[$key]}" -v hz="$CLK_TCK" \
    'BEGIN { printf "%.3f", d / hz / n * 1000 }')
  awk '$1 == 200' "$out" >"$out.ok"
  read -r pct <<<"$(percentiles "$out.ok" 2)"
  read -r P50[$key] P90[$key] P99[$key] <<<"$pct"
  BYTES[$key]=$(awk '{ s += $3 } END { printf "%d", s / NR }' "$out.ok")
  COLL[$key]=-
  if [ "$name" = agent ]; then
    COLL[$key]=$(awk -v a="$c0" -v b="$c1" 'BEGIN {
      split(a, x, " "); split(b, y, " ")
      if (y[1] > x[1]) printf "%.3f", (y[2] - x[2]) / (y[1] - x[1]) * 1000; else print "-" }')
  fi
}

for mode in $MODES; do
  case "$mode" in plain | gzip) ;; *) die "unknown mode '$mode' (plain, gzip)" ;; esac
  measure agent "$mode" "$AGENT_PID" "$AGENT_METRICS_URL" "${AGENT_ARGS[@]}"
  measure node_exporter "$mode" "$NE_PID" "$NE_METRICS_URL"
done

AGENT_RSS=$(status_kb "$AGENT_PID" VmRSS) AGENT_HWM=$(status_kb "$AGENT_PID" VmHWM)
NE_RSS=$(status_kb "$NE_PID" VmRSS) NE_HWM=$(status_kb "$NE_PID" VmHWM)

# --- optional profile (PROFILE=1), over extra batches of the same agent ---------------------------
if [ "${PROFILE:-0}" = 1 ]; then
  cfg=$BENCH_TMP/profile.cfg
  curl_config_repeat "$cfg" "$AGENT_METRICS_URL" "$SCRAPES"
  log "profiling the agent: perf stat, then perf record, over $SCRAPES plain scrapes each"
  perf stat -e context-switches,cpu-migrations,task-clock -p "$AGENT_PID" -o "$BENCH_TMP/perf-stat.txt" -- \
    timeout "$TIME_LIMIT" curl -sS --max-time 10 "${AGENT_ARGS[@]}" -K "$cfg" -w '%{http_code}\n' \
    >"$BENCH_TMP/profile-stat.out" 2>/dev/null || true
  perf record -q -e cpu-clock -F 1999 -p "$AGENT_PID" -o "$BENCH_TMP/perf.data" -- \
    timeout "$TIME_LIMIT" curl -sS --max-time 10 "${AGENT_ARGS[@]}" -K "$cfg" -w '%{http_code}\n' \
    >"$BENCH_TMP/profile-record.out" 2>/dev/null || true
  # Whole reports go to files and awk keeps the head: no early-closed pipe (SIGPIPE).
  perf report -i "$BENCH_TMP/perf.data" --no-children --sort dso --stdio >"$BENCH_TMP/report-dso.txt" 2>/dev/null || true
  perf report -i "$BENCH_TMP/perf.data" --no-children --sort dso,sym --stdio >"$BENCH_TMP/report-sym.txt" 2>/dev/null || true
fi

# --- breakdown of the agent's per-scrape cost -------------------------------------------------------
# healthz: TLS + HTTP only. cached: a second agent with cache_ttl 60 s serves the same view
# from its snapshot cache (render + send, no collection). The rest of the full scrape is the
# collection itself.
log "breakdown: /healthz, then the view from a cache_ttl 60s agent"
# These requests are ~10x cheaper: 5x as many keep the 10 ms tick resolution useful.
COUNT=$((SCRAPES * 5)) measure agent-healthz plain "$AGENT_PID" "$AGENT_URL/healthz" "${AGENT_ARGS[@]}"
stop_agent
start_agent "$STATE_ROOT" 60s
wait_until 30 instances_listed 1 || die "the cache_ttl 60s agent did not list the container"
COUNT=$((SCRAPES * 5)) measure agent-cached plain "$AGENT_PID" "$AGENT_METRICS_URL" "${AGENT_ARGS[@]}"

# --- summary ---------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.3f", a / b }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.3f", a - b }'; }
commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD 2>/dev/null || commit="$commit (+ uncommitted changes)"
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
ne_version=$(prometheus-node-exporter --version 2>&1 | awk 'NR == 1 { print $3 }')
row() {
  local k=$1/$2
  printf '%-14s %-6s %6s %4s %5s %8s %10s %8s %8s %8s %9s %10s\n' "$1" "$2" "${N[$k]}" \
    "${ERR[$k]}" "${CONNS[$k]}" "${WALL[$k]}" "${CPU[$k]}" "${P50[$k]}" "${P90[$k]}" "${P99[$k]}" \
    "${BYTES[$k]}" "${COLL[$k]}"
}

cat <<EOT

=== lookout agent vs node_exporter: cost of one scrape ===
date         $(date -u +%Y-%m-%dT%H:%M:%SZ)
host         $(uname -r), $(nproc) CPUs ($cpu_model), CLK_TCK $CLK_TCK
commit       $commit; binary $LOOKOUT_SRC built $LOOKOUT_BUILT
container    $CONTAINER (instance $ID); agent cache_ttl 0s (every scrape collects), HTTP/$HTTP over mTLS
load         load average $LOAD_START at start, $(cut -d' ' -f1 /proc/loadavg) at end
node_exporter $ne_version, default collectors, plain HTTP/1.1
view size    agent $(series "$BENCH_TMP/agent-view.txt") series / $(families "$BENCH_TMP/agent-view.txt") families / $(wc -c <"$BENCH_TMP/agent-view.txt") B; node_exporter $(series "$BENCH_TMP/ne-view.txt") series / $(families "$BENCH_TMP/ne-view.txt") families / $(wc -c <"$BENCH_TMP/ne-view.txt") B
method       $SCRAPES requests per row ($((SCRAPES * 5)) for the breakdown rows) over one keep-alive
             connection (curl), after $WARMUP warm-up;
             CPU = server utime+stime delta / successful requests (tick = $((1000 / CLK_TCK)) ms)

EOT
printf '%-14s %-6s %6s %4s %5s %8s %10s %8s %8s %8s %9s %10s\n' \
  server enc ok err conns wall_s cpu_ms/scr p50_ms p90_ms p99_ms bytes collect_ms
for mode in $MODES; do
  row agent "$mode"
  row node_exporter "$mode"
done
echo
echo "ratio agent / node_exporter (target: CPU per scrape < 0.050, i.e. under 1/20)"
printf '%-6s %10s %8s %8s  %s\n' enc cpu/scrape p50 p99 "cpu target"
for mode in $MODES; do
  a=agent/$mode b=node_exporter/$mode
  r=$(ratio "${CPU[$a]}" "${CPU[$b]}")
  verdict=$(awk -v r="$r" 'BEGIN { if (r == "-") print "n/a"; else if (r < 0.05) print "met"; else printf "missed (%.1fx over)", r / 0.05 }')
  printf '%-6s %10s %8s %8s  %s\n' "$mode" "$r" "$(ratio "${P50[$a]}" "${P50[$b]}")" \
    "$(ratio "${P99[$a]}" "${P99[$b]}")" "$verdict"
done
cat <<EOT

breakdown of one agent scrape (plain)                       cpu_ms/scrape
  TLS + HTTP only (GET /healthz, same connection pattern)   ${CPU[agent-healthz/plain]}
  + render and send the view (cache_ttl 60s agent, cached)  ${CPU[agent-cached/plain]}
  + collection (full scrape, cache_ttl 0s)                  ${CPU[agent/plain]:--}
  => collection alone                                       $(minus "${CPU[agent/plain]:--}" "${CPU[agent-cached/plain]}")
  => render + send alone                                    $(minus "${CPU[agent-cached/plain]}" "${CPU[agent-healthz/plain]}")
  p50 latency: healthz ${P50[agent-healthz/plain]} ms, cached ${P50[agent-cached/plain]} ms, full ${P50[agent/plain]:--} ms

memory at end: agent VmRSS $((AGENT_RSS / 1024)) MiB (VmHWM $((AGENT_HWM / 1024)) MiB); node_exporter VmRSS $((NE_RSS / 1024)) MiB (VmHWM $((NE_HWM / 1024)) MiB)
collect_ms = mean of lookout_agent_collection_seconds over the row (the agent's own timing of a collection)
EOT
busy_note

if [ "${PROFILE:-0}" = 1 ]; then
  n=$(grep -c '^200' "$BENCH_TMP/profile-stat.out" || true)
  echo
  echo "=== profile of the agent (PROFILE=1; extra batches, not part of the figures above) ==="
  awk -v n="$n" '/context-switches|cpu-migrations|task-clock/ {
      gsub(",", "", $1); name = ($2 == "msec" ? "task-clock (ms)" : $2)
      printf "%-18s %10.3f per scrape\n", name, (n > 0 ? $1 / n : 0) }' "$BENCH_TMP/perf-stat.txt"
  echo "($n scrapes)"
  echo
  awk '!/^#/ && NF && n++ < 8 { sub(/ +$/, ""); print }' "$BENCH_TMP/report-dso.txt"
  echo
  awk '!/^#/ && NF && n++ < 30 { sub(/ +$/, ""); print }' "$BENCH_TMP/report-sym.txt"
fi
exit 0
