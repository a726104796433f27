#!/usr/bin/env bash
# What the lookout agent costs on a node with N containers (default 1,000): CPU (% of one
# core), memory (VmRSS, VmHWM) and open fds, idle and while every container is scraped once
# every INTERVAL seconds. Target: 1,000 containers cost < 1 % of a core and < 32 MiB.
#
# The containers are "cheap containers": for each, a real cgroup in every v1 controller
# (cpu, cpuacct, cpuset, memory with a 256 MiB limit, blkio, pids) and in the v2 tree at
# /sys/fs/cgroup/unified, a real `sleep 3600` process moved into all of them, and a
# runc-style state.json in a private state root that the agent discovers. So the agent reads
# real kernel files for real processes; only runc itself is absent (fixture-style state). The
# processes run in the host's mount and network namespaces (host mounts, host interfaces).
#
# Phases, after all N are listed by the agent and SETTLE seconds:
#   idle    IDLE_SECONDS without requests (load sampler every 5 s, rescan every 30 s)
#   scrape  ROUNDS rounds, one every INTERVAL s; a round requests all N views, split over
#           PARALLEL curl processes, each one keep-alive connection (cache_ttl = 1 s, the
#           agent's default; each container is asked once per round, so every request collects)
# node_exporter runs idle meanwhile; its RSS is reported as the peer figure.
#
# It reports; it asserts nothing about timing. Exit 0 when the measurement completed.
# Everything it creates (processes, cgroups, state files, temp files) is removed on exit.
#
# Environment (defaults):
#   N=1000  ROUNDS=8  INTERVAL=15  IDLE_SECONDS=ROUNDS*INTERVAL  SETTLE=10  PARALLEL=1
#   HTTP=1.1 (or 2)   SLEEP_BIN=/bin/sleep   LOOKOUT_BIN=<repo>/target/release/lookout   AGENT_PORT=19164
#   NE_PORT=19100
#   PROFILE=0         1: afterwards, profile the agent with `perf` over one more round and an
#                     idle stretch of INTERVAL s, and count its syscalls per scrape with `strace`
#   PROFILE_DIR=/tmp/lookout-profile   where PROFILE=1 leaves perf.data and perf-idle.data
set -euo pipefail
# shellcheck source=deploy/bench/lib.sh
. "$(dirname "$0")/lib.sh"

N=${N:-1000}
ROUNDS=${ROUNDS:-8}
INTERVAL=${INTERVAL:-15}
IDLE_SECONDS=${IDLE_SECONDS:-$((ROUNDS * INTERVAL))}
SETTLE=${SETTLE:-10}
PARALLEL=${PARALLEL:-1}
SLEEP_BIN=${SLEEP_BIN:-/bin/sleep}
PROFILE_DIR=${PROFILE_DIR:-/tmp/lookout-profile}

# --- prerequisites ------------------------------------------------------------------------------
need_root
need_lookout
need_v1_hybrid
need curl curl
need openssl openssl
need jq jq
need prometheus-node-exporter prometheus-node-exporter
need timeout coreutils
need getconf libc-bin
if [ "${PROFILE:-0}" = 1 ]; then
  need perf linux-perf
  need strace strace
fi
[ -x "$SLEEP_BIN" ] || die "$SLEEP_BIN missing — install it: apt-get install -y coreutils"
for v in N ROUNDS INTERVAL IDLE_SECONDS PARALLEL; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[[ "$SETTLE" =~ ^[0-9]+$ ]] || die "SETTLE must be a non-negative integer"
for p in "$AGENT_PORT" "$NE_PORT"; do
  port_free "$p" || die "127.0.0.1:$p is in use (set AGENT_PORT / NE_PORT)"
done
pid_max=$(</proc/sys/kernel/pid_max)
[ "$pid_max" -gt $((N + 2000)) ] || die "kernel.pid_max $pid_max is too small for N=$N"

bench_traps
bench_tmp
gen_certs "$BENCH_TMP"

# --- N cheap containers ------------------------------------------------------------------------------
STATE_ROOT=$BENCH_TMP/state
mkdir -p "$STATE_ROOT"
log "creating $N cheap containers (cgroups in ${V1_CTRLS[*]} unified, sleep 3600, state.json)"
cheap_init "lookout-bench-$$"
t_create=$EPOCHREALTIME
for ((i = 1; i <= N; i++)); do
  cheap_start "bench-$i" "$STATE_ROOT" 268435456 50000
done
t_created=$EPOCHREALTIME
log "created $N in $(awk -v a="$t_create" -v b="$t_created" 'BEGIN { printf "%.1f", b - a }') s"

# --- the agent and node_exporter ------------------------------------------------------------------------
start_node_exporter
t_start=$EPOCHREALTIME
start_agent "$STATE_ROOT" 1s
wait_until 120 instances_listed "$N" ||
  die "the agent did not list $N instances within 120 s (listed: $(agent_get /v1/instances | jq length)); log: $(tail -20 "$BENCH_TMP/agent.log")"
t_listed=$EPOCHREALTIME
DISCOVERY_S=$(awk -v a="$t_start" -v b="$t_listed" 'BEGIN { printf "%.1f", b - a }')
log "agent pid $AGENT_PID lists $N instances ${DISCOVERY_S} s after start; node_exporter pid $NE_PID"
STARTUP_TICKS=$(cpu_ticks "$AGENT_PID")

# snapshot NAME: memory and fds of the agent now.
declare -A RSS HWM FDS THR ANON FILE
snapshot() {
  RSS[$1]=$(status_kb "$AGENT_PID" VmRSS)
  HWM[$1]=$(status_kb "$AGENT_PID" VmHWM)
  ANON[$1]=$(status_kb "$AGENT_PID" RssAnon)
  FILE[$1]=$(status_kb "$AGENT_PID" RssFile)
  FDS[$1]=$(fd_count "$AGENT_PID")
  THR[$1]=$(status_kb "$AGENT_PID" Threads)
}
snapshot start
sleep "$SETTLE"

# --- idle ------------------------------------------------------------------------------------------------
log "idle phase: ${IDLE_SECONDS} s without requests"
t0=$(cpu_ticks "$AGENT_PID")
w0=$EPOCHREALTIME
sleep "$IDLE_SECONDS"
t1=$(cpu_ticks "$AGENT_PID")
w1=$EPOCHREALTIME
IDLE_TICKS=$((t1 - t0))
IDLE_WALL=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", b - a }')
snapshot idle
NE_IDLE_RSS=$(status_kb "$NE_PID" VmRSS)
NE_IDLE_HWM=$(status_kb "$NE_PID" VmHWM)

# --- scrape ----------------------------------------------------------------------------------------------
mapfile -t IDS < <(agent_get /v1/instances | jq -r '.[].id')
[ "${#IDS[@]}" -eq "$N" ] || die "expected $N instances, the agent lists ${#IDS[@]}"
read -ra AGENT_ARGS <<<"$(agent_curl_args)"
# PARALLEL configs, each with every PARALLEL-th instance.
for ((p = 0; p < PARALLEL; p++)); do
  urls=()
  for ((i = p; i < N; i += PARALLEL)); do urls+=("$AGENT_URL/v1/instances/${IDS[i]}/metrics"); done
  curl_config "$BENCH_TMP/round-$p.cfg" "${urls[@]}"
done
# One view, for its shape.
agent_get "/v1/instances/${IDS[0]}/metrics" >"$BENCH_TMP/view.txt"
VIEW_SERIES=$(grep -vc '^#' "$BENCH_TMP/view.txt")
VIEW_FS=$(grep -c '^node_filesystem_size_bytes' "$BENCH_TMP/view.txt" || true)
VIEW_IF=$(grep -c '^node_network_receive_bytes_total' "$BENCH_TMP/view.txt" || true)

# seconds_until START K: seconds from now until START + K * INTERVAL (0 if past).
seconds_until() {
  awk -v a="$1" -v k="$2" -v i="$INTERVAL" -v n="$EPOCHREALTIME" \
    'BEGIN { d = a + k * i - n; if (d < 0) d = 0; printf "%.3f", d }'
}

log "scrape phase: $ROUNDS rounds of $N requests, one round every ${INTERVAL} s, $PARALLEL connection(s)"
: >"$BENCH_TMP/all.out"
ROUND_S=()
ROUND_MS=() # agent CPU per scrape within each round (ms): robust to what runs between rounds
t0=$(cpu_ticks "$AGENT_PID")
w0=$EPOCHREALTIME
for ((r = 0; r < ROUNDS; r++)); do
  # Round r starts at w0 + r*INTERVAL.
  sleep "$(seconds_until "$w0" "$r")"
  rs=$EPOCHREALTIME
  rt0=$(cpu_ticks "$AGENT_PID")
  cpids=()
  for ((p = 0; p < PARALLEL; p++)); do
    curl_batch "$BENCH_TMP/round-$p.cfg" "$BENCH_TMP/round-$r-$p.out" "$INTERVAL" "${AGENT_ARGS[@]}" &
    cpids+=($!)
  done
  wait "${cpids[@]}"
  re=$EPOCHREALTIME
  rt1=$(cpu_ticks "$AGENT_PID")
  rok=$(cat "$BENCH_TMP"/round-"$r"-*.out | awk '$1 == 200' | wc -l)
  ROUND_MS+=("$(awk -v t=$((rt1 - rt0)) -v n="$rok" -v hz="$CLK_TCK" 'BEGIN { if (n) printf "%.3f", t / hz / n * 1000; else print "-" }')")
  ROUND_S+=("$(awk -v a="$rs" -v b="$re" 'BEGIN { printf "%.2f", b - a }')")
  cat "$BENCH_TMP"/round-"$r"-*.out >>"$BENCH_TMP/all.out"
  log "round $((r + 1))/$ROUNDS: $(awk '$1 == 200' "$BENCH_TMP"/round-"$r"-*.out | wc -l) ok in ${ROUND_S[r]} s"
done
sleep "$(seconds_until "$w0" "$ROUNDS")"
t1=$(cpu_ticks "$AGENT_PID")
w1=$EPOCHREALTIME
SCRAPE_TICKS=$((t1 - t0))
SCRAPE_WALL=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", b - a }')
snapshot scrape
OK=$(awk '$1 == 200' "$BENCH_TMP/all.out" | wc -l)
ERR=$(awk '$1 != 200' "$BENCH_TMP/all.out" | wc -l)
awk '$1 == 200' "$BENCH_TMP/all.out" >"$BENCH_TMP/all.ok"
read -r P50 P90 P99 <<<"$(percentiles "$BENCH_TMP/all.ok" 2)"
BYTES=$(awk '{ s += $3 } END { if (NR) printf "%d", s / NR; else print "-" }' "$BENCH_TMP/all.ok")
CONNS=$(awk '{ s += $4 } END { print s + 0 }' "$BENCH_TMP/all.out")
COLL=$(agent_get /metrics | awk '
  /^lookout_agent_collection_seconds_count/ { c = $2 }
  /^lookout_agent_collection_seconds_sum/ { s = $2 }
  END { if (c > 0) printf "%.3f", s / c * 1000; else print "-" }')

# node_exporter after one scrape, for a like-for-like "has served" figure.
curl -sS --fail --max-time 10 -o /dev/null "$NE_URL/metrics" || log "WARNING: node_exporter scrape failed"
NE_SCRAPED_RSS=$(status_kb "$NE_PID" VmRSS)

# --- optional profile (PROFILE=1): extra rounds, not part of the figures above --------------------
# profile_round NAME WRAPPER...: one more round of N scrapes under WRAPPER (perf or strace).
profile_round() {
  local name=$1
  shift
  "$@" -- timeout "$((INTERVAL * 4))" curl -sS --max-time 10 "${AGENT_ARGS[@]}" -K "$BENCH_TMP/round-0.cfg" \
    -o /dev/null -w '%{http_code}\n' >"$BENCH_TMP/profile-$name.out" 2>/dev/null || true
}
if [ "${PROFILE:-0}" = 1 ]; then
  log "profiling: perf over one round, perf over ${INTERVAL} s idle, strace over one round"
  # Each profiled round collects again: wait out the cache TTL.
  sleep 2
  profile_round perf perf record -q -e cpu-clock -F 1999 -g -p "$AGENT_PID" -o "$BENCH_TMP/perf.data"
  perf record -q -e cpu-clock -F 1999 -g -p "$AGENT_PID" -o "$BENCH_TMP/perf-idle.data" -- sleep "$INTERVAL" \
    >/dev/null 2>&1 || true
  sleep 2
  # strace attached by pid runs until told to detach: start it, run the round, stop it.
  strace -c -f -o "$BENCH_TMP/strace.txt" -p "$AGENT_PID" 2>/dev/null &
  strace_pid=$!
  sleep 1
  profile_round strace env
  kill -INT "$strace_pid" 2>/dev/null || true
  wait "$strace_pid" 2>/dev/null || true
  for d in perf perf-idle; do
    perf report -i "$BENCH_TMP/$d.data" --no-children --sort dso,sym --stdio -g none >"$BENCH_TMP/$d-sym.txt" 2>/dev/null || true
    perf report -i "$BENCH_TMP/$d.data" --children --sort sym --stdio -g none >"$BENCH_TMP/$d-children.txt" 2>/dev/null || true
  done
  # The raw profiles outlive the run for a closer look (perf report -i …).
  mkdir -p "$PROFILE_DIR"
  cp "$BENCH_TMP"/perf.data "$BENCH_TMP"/perf-idle.data "$PROFILE_DIR"/
  log "profiles kept in $PROFILE_DIR"
fi

# --- summary ---------------------------------------------------------------------------------------------
pct() { awk -v d="$1" -v w="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz / w * 100 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { if (v < t) print "met"; else printf "missed (%.1fx)", v / t }'; }
IDLE_PCT=$(pct "$IDLE_TICKS" "$IDLE_WALL")
SCRAPE_PCT=$(pct "$SCRAPE_TICKS" "$SCRAPE_WALL")
# Scrape work alone: scrape-phase CPU minus the idle rate over the same wall time.
PER_SCRAPE_MS=$(awk -v s="$SCRAPE_TICKS" -v sw="$SCRAPE_WALL" -v i="$IDLE_TICKS" -v iw="$IDLE_WALL" \
  -v n="$OK" -v hz="$CLK_TCK" 'BEGIN { if (n == 0) { print "-"; exit }
    printf "%.3f", (s - i * sw / iw) / hz / n * 1000 }')
MAX_RSS=${RSS[scrape]}
for k in start idle; do
  if [ "${RSS[$k]}" -gt "$MAX_RSS" ]; then MAX_RSS=${RSS[$k]}; fi
done
commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD 2>/dev/null || commit="$commit (+ uncommitted changes)"
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
round_max=$(printf '%s\n' "${ROUND_S[@]}" | sort -g | tail -1)

cat <<EOF

=== lookout agent with $N containers ===
date          $(date -u +%Y-%m-%dT%H:%M:%SZ)
host          $(uname -r), $(nproc) CPUs ($cpu_model), CLK_TCK $CLK_TCK
commit        $commit; binary $LOOKOUT_SRC built $LOOKOUT_BUILT
containers    $N cheap containers (real v1+v2 cgroups, real sleep processes, runc-style state.json)
view          $VIEW_SERIES series, $(wc -c <"$BENCH_TMP/view.txt") B per container; $VIEW_FS filesystems, $VIEW_IF interfaces (host namespaces)
load          load average $LOAD_START at start, $(cut -d' ' -f1 /proc/loadavg) at end; requests over HTTP/$HTTP, mTLS
discovery     all $N listed ${DISCOVERY_S} s after agent start; agent CPU until then $(awk -v t="$STARTUP_TICKS" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }') s

phase    wall_s  cpu_s   %core   VmRSS_MiB VmHWM_MiB fds  threads  anon_MiB file_MiB
EOF
# row PHASE WALL CPU PCT: one line of the table (anon: heap and stacks; file: mapped code).
row() {
  printf '%-8s %6s %6s %7s %9s %9s %4s %7s  %8s %8s\n' "$1" "$2" "$3" "$4" "$(mib "${RSS[$1]}")" \
    "$(mib "${HWM[$1]}")" "${FDS[$1]}" "${THR[$1]}" "$(mib "${ANON[$1]}")" "$(mib "${FILE[$1]}")"
}
row start - - -
row idle "$IDLE_WALL" "$(awk -v t="$IDLE_TICKS" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')" "$IDLE_PCT"
row scrape "$SCRAPE_WALL" "$(awk -v t="$SCRAPE_TICKS" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')" "$SCRAPE_PCT"
cat <<EOF

scrapes       $OK ok, $ERR failed, $CONNS connections; rounds of $N took ${ROUND_S[*]} s (max $round_max s)
latency       p50 $P50 ms, p90 $P90 ms, p99 $P99 ms; $BYTES B per response
per scrape    $PER_SCRAPE_MS ms agent CPU (scrape phase minus idle rate); collection mean $COLL ms (lookout_agent_collection_seconds)
per round     ${ROUND_MS[*]} ms agent CPU per scrape within each round (min $(printf '%s\n' "${ROUND_MS[@]}" | sort -g | head -1))
peer          node_exporter VmRSS idle $(mib "$NE_IDLE_RSS") MiB (VmHWM $(mib "$NE_IDLE_HWM") MiB), after one scrape $(mib "$NE_SCRAPED_RSS") MiB

targets (stated for 1,000)        measured   target   verdict   (this run: N=$N)
EOF
printf '%-33s %8s %8s   %s\n' "CPU idle, % of one core" "$IDLE_PCT" "< 1" "$(verdict "$IDLE_PCT" 1)"
printf '%-33s %8s %8s   %s\n' "CPU scraped every ${INTERVAL}s, % core" "$SCRAPE_PCT" "< 1" "$(verdict "$SCRAPE_PCT" 1)"
printf '%-33s %8s %8s   %s\n' "VmRSS, MiB (max of phases)" "$(mib "$MAX_RSS")" "< 32" "$(verdict "$(mib "$MAX_RSS")" 32)"
printf '%-33s %8s %8s   %s\n' "VmHWM, MiB" "$(mib "${HWM[scrape]}")" "< 32" "$(verdict "$(mib "${HWM[scrape]}")" 32)"
busy_note
if [ "${PROFILE:-0}" = 1 ]; then
  n=$(grep -c '^200' "$BENCH_TMP/profile-perf.out" || true)
  echo
  echo "=== profile (PROFILE=1; extra rounds, not part of the figures above) ==="
  echo "--- one round of $n scrapes: self time by symbol"
  awk '!/^#/ && NF && n++ < 40 { sub(/ +$/, ""); print }' "$BENCH_TMP/perf-sym.txt"
  echo "--- one round: inclusive time by symbol"
  awk '!/^#/ && NF && n++ < 60 { sub(/ +$/, ""); print }' "$BENCH_TMP/perf-children.txt"
  echo "--- ${INTERVAL} s idle: self time by symbol"
  awk '!/^#/ && NF && n++ < 25 { sub(/ +$/, ""); print }' "$BENCH_TMP/perf-idle-sym.txt"
  n=$(grep -c '^200' "$BENCH_TMP/profile-strace.out" || true)
  echo "--- syscalls over one round of $n scrapes (strace -c -f; calls per scrape = calls / $n)"
  cat "$BENCH_TMP/strace.txt"
fi
exit 0
