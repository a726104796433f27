#!/usr/bin/env bash
# Scrapes per second and added latency through lookout's proxy, against nginx as a plain TLS
# reverse proxy to the same agent, and against vmauth — same machine, same run, as ratios.
#
# Starts ONE real runc container (busybox `sleep 3600`), the lookout agent (cache_ttl 1 s, the
# default: every path below hits the same snapshot cache, so what differs is the proxy) and,
# all on 127.0.0.1:
#   lookout  `lookout proxy`: TLS listener, tenant authenticated by client certificate (or
#            bearer token), authorized (the container's tenant label), rate-limited (limits ON,
#            set far above the offered load), upstream mTLS keep-alive pool to the agent
#   nginx    nginx-light: TLS listener, no authentication, proxy_pass https to the agent with
#            the proxy's client certificate, keep-alive upstream
#   vmauth   Debian's vmauth 1.79: TLS listener, bearer-token user. It cannot present a client
#            certificate to a backend (no -backend.TLS* flags, no tls_* options in this
#            version), so its url_prefix is a plain-HTTP nginx "sidecar" on loopback that
#            does the mTLS to the agent; the `sidecar` target measures that hop alone
# and the agent directly (`direct`), the baseline for "added latency".
#
# Load generator: curl, the one tool in Debian with TLS keep-alive, client certificates,
# HTTP/1.1 and per-request timings at microsecond resolution for all targets. A level of C
# connections is C curl processes, each sending its share of REQUESTS one after another over
# one keep-alive connection (closed loop); level pR is one connection paced at R requests/s.
# A cross-check with wrk (a lighter client; no client certificates, so lookout is reached with
# a bearer token) follows for the targets that accept that.
#
# It reports; it asserts nothing about timing. Exit 0 when the measurement completed.
# Everything it creates (processes, cgroups, runc state, temp files) is removed on exit.
#
# Environment (defaults):
#   REQUESTS=10000    requests per row (split over the row's connections)
#   LEVELS="1 8 32 p200"  connections per row (closed loop); pR = 1 connection paced at R/s
#   PACED_REQUESTS=1000   requests per paced row
#   TARGETS="direct lookout lookout-token nginx vmauth sidecar"
#   ROUNDS=3          the whole matrix is run this many times (target order rotated each
#                     round); the summary shows the median of the rounds
#   WARMUP=200        requests to a target (one connection) before each of its rows
#   TIME_LIMIT=120    seconds a row may take (it stops by itself after that)
#   ENCODING=identity identity | gzip (Accept-Encoding: gzip, as Prometheus sends)
#   WRK_LEVELS="8 32" connections of the wrk cross-check rows ("" skips it)
#   WRK_SECONDS=5     duration of a wrk row; WRK_MAX=200000 requests per wrk thread at most
#   PROFILE=0         1: afterwards, `perf record` the lookout proxy over one more batch at
#                     the highest level (not part of the figures)
#   LOOKOUT_BIN=<repo>/target/release/lookout  AGENT_PORT=19164  PROXY_PORT=19163
#   PROXY_ADMIN_PORT=19165  NGINX_PORT=19443  SIDECAR_PORT=19180  VMAUTH_PORT=19427
set -euo pipefail
# shellcheck source=deploy/bench/lib.sh
. "$(dirname "$0")/lib.sh"

REQUESTS=${REQUESTS:-10000}
LEVELS=${LEVELS:-1 8 32 p200}
PACED_REQUESTS=${PACED_REQUESTS:-1000}
TARGETS=${TARGETS:-direct lookout lookout-token nginx vmauth sidecar}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-200}
TIME_LIMIT=${TIME_LIMIT:-120}
ENCODING=${ENCODING:-identity}
WRK_LEVELS=${WRK_LEVELS-8 32}
WRK_SECONDS=${WRK_SECONDS:-5}
WRK_MAX=${WRK_MAX:-200000}
PROXY_PORT=${PROXY_PORT:-19163}
PROXY_ADMIN_PORT=${PROXY_ADMIN_PORT:-19165}
NGINX_PORT=${NGINX_PORT:-19443}
SIDECAR_PORT=${SIDECAR_PORT:-19180}
VMAUTH_PORT=${VMAUTH_PORT:-19427}
# Far above what 2 cores can offer, but ON: every request still goes through both limiters.
RATE_LIMIT='{ per_second = 100000.0, burst = 100000 }'

# --- prerequisites ------------------------------------------------------------------------------
need_root
need_lookout
need curl curl
need jq jq
need nginx nginx-light
need vmauth victoria-metrics
need runc runc
need timeout coreutils
need sha256sum coreutils
need pgrep procps
need getconf libc-bin
[ -n "$WRK_LEVELS" ] && need wrk wrk
[ "${PROFILE:-0}" = 1 ] && need perf linux-perf
need_static_busybox
for p in "$AGENT_PORT" "$PROXY_PORT" "$PROXY_ADMIN_PORT" "$NGINX_PORT" "$SIDECAR_PORT" "$VMAUTH_PORT"; do
  port_free "$p" || die "127.0.0.1:$p is in use (see the *_PORT variables)"
done
for v in REQUESTS PACED_REQUESTS ROUNDS TIME_LIMIT WRK_SECONDS WRK_MAX; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer"
for l in $LEVELS; do
  [[ "$l" =~ ^(p?[1-9][0-9]*)$ ]] || die "LEVELS: '$l' is neither a connection count nor pRATE"
done
for l in $WRK_LEVELS; do [[ "$l" =~ ^[1-9][0-9]*$ ]] || die "WRK_LEVELS: '$l' is not a count"; done
for t in $TARGETS; do
  case "$t" in direct | lookout | lookout-token | nginx | vmauth | sidecar) ;;
  *) die "unknown target '$t' (direct lookout lookout-token nginx vmauth sidecar)" ;; esac
done
case "$ENCODING" in identity | gzip) ;; *) die "ENCODING must be identity or gzip" ;; esac

# Load-generator processes of the row in flight: ended (by pid) on exit, before the servers.
LOAD_PIDS=()
proxy_bench_cleanup() {
  local rc=$? pid
  set +e   # the trap must run to the end: a failing step here must not skip the cleanup
  for pid in "${LOAD_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  (exit "$rc")
  bench_cleanup
}
trap proxy_bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bench_tmp
lookout_pki "$BENCH_TMP"
TOKEN=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')

# --- the container and the agent ------------------------------------------------------------------
log "starting a runc container (busybox sleep 3600, 256 MiB, 0.5 CPU)"
runc_start bench-c1 268435456 50000
log "starting the agent (cache_ttl 1s)"
start_agent "$RUNC_ROOT" 1s
wait_until 30 instances_listed 1 ||
  die "the agent did not list the container within 30 s; log: $(tail -20 "$BENCH_TMP/agent.log")"
ID=$(agent_get /v1/instances | jq -r '.[0].id')
TENANT=$(agent_get /v1/instances | jq -r '.[0].tenant')
[ "$TENANT" = bench ] || die "the container's tenant is '$TENANT', expected 'bench'"
SCRAPE_PATH=/v1/instances/$ID/metrics

# --- lookout proxy ----------------------------------------------------------------------------------
cat >"$BENCH_TMP/tenants.toml" <<EOF
[defaults]
rate_limit = $RATE_LIMIT
[[tenant]]
name = "bench"
token_sha256 = ["$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)"]
EOF
{
  proxy_toml_head "$PROXY_PORT" "$PROXY_ADMIN_PORT"
  cat <<EOF
[inventory]
source = "agents"
agents = ["127.0.0.1:$AGENT_PORT"]
[inventory.tls]
cert = "$BENCH_TMP/client.pem"
key = "$BENCH_TMP/client-key.pem"
ca = "$BENCH_TMP/ca.pem"
[limits]
source = $RATE_LIMIT
EOF
} >"$BENCH_TMP/proxy.toml"
"$LOOKOUT_BIN" proxy --config "$BENCH_TMP/proxy.toml" --check-config >"$BENCH_TMP/proxy-check.log" 2>&1 ||
  die "proxy --check-config failed: $(cat "$BENCH_TMP/proxy-check.log")"
log "starting the lookout proxy"
LOOKOUT_LOG=${LOOKOUT_LOG:-info} bg_start proxy "$LOOKOUT_BIN" proxy --config "$BENCH_TMP/proxy.toml"
PROXY_PID=$BG_PID

# --- nginx: the TLS front (peer) and the plain-HTTP sidecar in front of vmauth ----------------------
# nginx_conf NAME PORT tls|plain: one nginx instance listening on 127.0.0.1:PORT and passing
# /v1/instances/… to the agent over mTLS (the proxy's client certificate) on kept-alive
# connections. Tuned in nginx's favour: no access log, keep-alive connections never retired.
nginx_conf() {
  local name=$1 port=$2 mode=$3 d=$BENCH_TMP/$1 listen
  mkdir -p "$d"
  listen="listen 127.0.0.1:$port;"
  if [ "$mode" = tls ]; then
    listen="listen 127.0.0.1:$port ssl;
    ssl_certificate $BENCH_TMP/server.pem;
    ssl_certificate_key $BENCH_TMP/server-key.pem;"
  fi
  cat >"$d/nginx.conf" <<EOF
# Workers run as nobody: they need no file (keys are read by the master; bodies are small
# and never buffered to disk).
user nobody nogroup;
worker_processes auto;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
  proxy_max_temp_file_size 0;
  upstream agent {
    server 127.0.0.1:$AGENT_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    $listen
    keepalive_requests 1000000;
    location /v1/instances/ {
      proxy_pass https://agent;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # What lookout's proxy asserts for the tenant it authorized; here, the bench tenant.
      proxy_set_header x-lookout-tenant bench;
      proxy_ssl_certificate $BENCH_TMP/client.pem;
      proxy_ssl_certificate_key $BENCH_TMP/client-key.pem;
      proxy_ssl_trusted_certificate $BENCH_TMP/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;
    }
    location / { return 404; }
  }
}
EOF
  nginx -t -q -p "$d" -c "$d/nginx.conf" >"$d/test.log" 2>&1 ||
    die "nginx -t ($name) failed: $(cat "$d/test.log")"
}
log "starting nginx (TLS front) and the nginx sidecar (plain HTTP, for vmauth)"
nginx_conf nginx "$NGINX_PORT" tls
bg_start nginx nginx -p "$BENCH_TMP/nginx" -c "$BENCH_TMP/nginx/nginx.conf" -g 'daemon off;'
NGINX_PID=$BG_PID
nginx_conf sidecar "$SIDECAR_PORT" plain
bg_start sidecar nginx -p "$BENCH_TMP/sidecar" -c "$BENCH_TMP/sidecar/nginx.conf" -g 'daemon off;'
SIDECAR_PID=$BG_PID

# --- vmauth ---------------------------------------------------------------------------------------
cat >"$BENCH_TMP/vmauth.yml" <<EOF
users:
- bearer_token: "$TOKEN"
  url_prefix: "http://127.0.0.1:$SIDECAR_PORT"
EOF
log "starting vmauth"
# No response compression: like the others it passes the agent's bytes through as they are.
bg_start vmauth vmauth -auth.config="$BENCH_TMP/vmauth.yml" -httpListenAddr="127.0.0.1:$VMAUTH_PORT" \
  -tls -tlsCertFile="$BENCH_TMP/server.pem" -tlsKeyFile="$BENCH_TMP/server-key.pem" \
  -http.disableResponseCompression -loggerLevel=WARN
VMAUTH_PID=$BG_PID

# --- targets ----------------------------------------------------------------------------------------
declare -A URL FRONT SIDE
URL[direct]="$AGENT_URL$SCRAPE_PATH"
URL[lookout]="https://127.0.0.1:$PROXY_PORT$SCRAPE_PATH"
URL[lookout-token]=${URL[lookout]}
URL[nginx]="https://127.0.0.1:$NGINX_PORT$SCRAPE_PATH"
URL[vmauth]="https://127.0.0.1:$VMAUTH_PORT$SCRAPE_PATH"
URL[sidecar]="http://127.0.0.1:$SIDECAR_PORT$SCRAPE_PATH"
FRONT=([direct]="" [lookout]=$PROXY_PID [lookout-token]=$PROXY_PID [nginx]=$NGINX_PID [vmauth]=$VMAUTH_PID [sidecar]=$SIDECAR_PID)
SIDE=([direct]="" [lookout]="" [lookout-token]="" [nginx]="" [vmauth]=$SIDECAR_PID [sidecar]="")

# target_args TARGET: curl's arguments for TARGET, one per line.
target_args() {
  printf '%s\n' --http1.1 --cacert "$BENCH_TMP/ca.pem"
  [ "$ENCODING" = gzip ] && printf '%s\n' -H 'Accept-Encoding: gzip'
  case "$1" in
  direct) printf '%s\n' --cert "$BENCH_TMP/client.pem" --key "$BENCH_TMP/client-key.pem" ;;
  lookout) printf '%s\n' --cert "$BENCH_TMP/tenant.pem" --key "$BENCH_TMP/tenant-key.pem" ;;
  lookout-token | vmauth) printf '%s\n' -H "Authorization: Bearer $TOKEN" ;;
  esac
  return 0
}

target_ok() {
  local args
  mapfile -t args < <(target_args "$1")
  [ "$(curl -sS --max-time 5 "${args[@]}" -o /dev/null -w '%{http_code}' "${URL[$1]}")" = 200 ]
}
for t in direct lookout lookout-token nginx vmauth sidecar; do
  wait_until 30 target_ok "$t" ||
    die "$t does not answer 200 for ${URL[$t]} within 30 s (logs in $BENCH_TMP: proxy.log nginx/error.log sidecar/error.log vmauth.log)"
done
# A refused credential must be refused (so the 200s above mean authentication ran).
[ "$(curl -sS --max-time 5 --cacert "$BENCH_TMP/ca.pem" -o /dev/null -w '%{http_code}' "${URL[lookout]}")" = 401 ] ||
  die "lookout answered an unauthenticated scrape with something else than 401"
[ "$(curl -sS --max-time 5 --cacert "$BENCH_TMP/ca.pem" -o /dev/null -w '%{http_code}' "${URL[vmauth]}")" = 401 ] ||
  die "vmauth answered an unauthenticated scrape with something else than 401"
log "all targets answer; agent pid $AGENT_PID, proxy $PROXY_PID, nginx $NGINX_PID, sidecar $SIDECAR_PID, vmauth $VMAUTH_PID"

# --- measurement helpers ------------------------------------------------------------------------------
# child_ticks: CPU ticks of this shell's waited-for children (curl under timeout, and the
# few small commands run between two samples), fields 16 + 17 of /proc/$$/stat.
child_ticks() {
  local s f
  read -r s <"/proc/$$/stat"
  s=${s##*) }
  read -ra f <<<"$s"
  echo $((f[13] + f[14]))
}

proxy_throttled() {
  curl -sS --max-time 5 "http://127.0.0.1:$PROXY_ADMIN_PORT/metrics" |
    awk '/^lookout_proxy_throttled_total/ { s += $2 } END { print s + 0 }'
}

# ticks_ms DELTA_TICKS N: milliseconds of CPU per request.
ticks_ms() { awk -v d="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.3f", d / hz / n * 1000; else print "-" }'; }

RESULTS=$BENCH_TMP/results.tsv
: >"$RESULTS"

# run_curl ROUND LEVEL TARGET: one row; appends a line to $RESULTS.
run_curl() {
  local round=$1 level=$2 t=$3 conns rate=0 n per i args out=$BENCH_TMP/load
  if [[ "$level" == p* ]]; then
    conns=1 rate=${level#p} n=$PACED_REQUESTS
  else
    conns=$level n=$REQUESTS
  fi
  per=$(((n + conns - 1) / conns))
  mapfile -t args < <(target_args "$t")
  if [ "$WARMUP" -gt 0 ]; then
    curl_config_repeat "$BENCH_TMP/warmup.cfg" "${URL[$t]}" "$WARMUP"
    curl_batch "$BENCH_TMP/warmup.cfg" "$BENCH_TMP/warmup.out" "$TIME_LIMIT" "${args[@]}"
  fi
  [ "$rate" -gt 0 ] && args+=(--rate "$rate/s")
  curl_config_repeat "$BENCH_TMP/row.cfg" "${URL[$t]}" "$per"
  rm -f "$out".*
  local front=${FRONT[$t]} side=${SIDE[$t]} a0 a1 f0 f1=0 s0 s1=0 c0 c1 o0 o1 th0=0 th1=0 w0 w1
  [[ "$t" == lookout* ]] && th0=$(proxy_throttled)
  a0=$(cpu_ticks "$AGENT_PID")
  f0=0 s0=0
  [ -n "$front" ] && f0=$(tree_ticks "$front")
  [ -n "$side" ] && s0=$(tree_ticks "$side")
  o0=$(tcp_active_opens)
  c0=$(child_ticks)
  w0=$EPOCHREALTIME
  LOAD_PIDS=()
  for ((i = 0; i < conns; i++)); do
    timeout --kill-after=5 "$TIME_LIMIT" curl -sS --max-time 10 "${args[@]}" -K "$BENCH_TMP/row.cfg" \
      -w '%{http_code} %{time_total} %{size_download} %{num_connects}\n' >"$out.$i" 2>>"$BENCH_TMP/curl.err" &
    LOAD_PIDS+=($!)
  done
  wait "${LOAD_PIDS[@]}" || true
  LOAD_PIDS=()
  w1=$EPOCHREALTIME
  c1=$(child_ticks)
  o1=$(tcp_active_opens)
  a1=$(cpu_ticks "$AGENT_PID")
  [ -n "$front" ] && f1=$(tree_ticks "$front")
  [ -n "$side" ] && s1=$(tree_ticks "$side")
  [[ "$t" == lookout* ]] && th1=$(proxy_throttled)
  cat "$out".* >"$out.all"
  local ok err nconn wall rps pct bytes
  ok=$(awk '$1 == 200' "$out.all" | wc -l)
  err=$(awk '$1 != 200' "$out.all" | wc -l)
  nconn=$(awk '{ s += $4 } END { print s + 0 }' "$out.all")
  wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", b - a }')
  rps=$(awk -v n="$ok" -v w="$wall" 'BEGIN { printf "%.0f", (w > 0 ? n / w : 0) }')
  # Latency over requests on an already open connection (the first of each connection also
  # carries the TCP and TLS handshakes).
  awk '$1 == 200 && $4 == 0' "$out.all" >"$out.ok"
  read -r pct <<<"$(percentiles "$out.ok" 2)"
  bytes=$(awk '{ s += $3 } END { printf "%d", (NR ? s / NR : 0) }' "$out.ok")
  printf 'curl\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$level" "$t" \
    "$ok" "$err" "$nconn" "$wall" "$rps" "$(tr ' ' '\t' <<<"$pct")" "$bytes" \
    "$(ticks_ms $((c1 - c0)) "$ok")" "$([ -n "$front" ] && ticks_ms $((f1 - f0)) "$ok" || echo -)" \
    "$([ -n "$side" ] && ticks_ms $((s1 - s0)) "$ok" || echo -)" "$(ticks_ms $((a1 - a0)) "$ok")" \
    "$((o1 - o0))" "$((th1 - th0))" >>"$RESULTS"
  log "  $t c=$level: $ok ok, $err failed, $rps req/s, p50/p90/p99 $pct ms"
}

# wrk's Lua: the same header for every target (a bearer token; nginx passes it on unread),
# and at most WRK_MAX requests per thread.
cat >"$BENCH_TMP/wrk.lua" <<EOF
local n = 0
local max = $WRK_MAX
local req = nil
function request()
  n = n + 1
  if n > max then wrk.thread:stop() end
  if not req then
    local h = { ["Authorization"] = "Bearer $TOKEN" }
    if "$ENCODING" == "gzip" then h["Accept-Encoding"] = "gzip" end
    req = wrk.format(nil, nil, h)
  end
  return req
end
EOF

# to_ms VALUE: wrk's "773.00us" / "6.14ms" / "1.02s" in ms.
to_ms() { awk -v v="$1" 'BEGIN { u = v; sub(/^[0-9.]+/, "", u); x = v + 0
  if (u == "us") x /= 1000; else if (u == "s") x *= 1000; printf "%.2f", x }'; }

# run_wrk ROUND CONNS TARGET: one wrk row (time-bound, count-bound by the Lua above).
run_wrk() {
  local round=$1 conns=$2 t=$3 threads=2 out=$BENCH_TMP/wrk.out
  [ "$conns" -lt 2 ] && threads=1
  local front=${FRONT[$t]} side=${SIDE[$t]} a0 a1 f0=0 f1=0 s0=0 s1=0 o0 o1 c0 c1
  a0=$(cpu_ticks "$AGENT_PID")
  [ -n "$front" ] && f0=$(tree_ticks "$front")
  [ -n "$side" ] && s0=$(tree_ticks "$side")
  o0=$(tcp_active_opens)
  c0=$(child_ticks)
  timeout --kill-after=5 $((WRK_SECONDS + 30)) wrk -t "$threads" -c "$conns" -d "${WRK_SECONDS}s" \
    --timeout 10s --latency -s "$BENCH_TMP/wrk.lua" "${URL[$t]}" >"$out" 2>&1 || true
  c1=$(child_ticks)
  o1=$(tcp_active_opens)
  a1=$(cpu_ticks "$AGENT_PID")
  [ -n "$front" ] && f1=$(tree_ticks "$front")
  [ -n "$side" ] && s1=$(tree_ticks "$side")
  local n secs rps p50 p90 p99 err
  n=$(awk '/requests in/ { print $1 }' "$out")
  secs=$(awk '/requests in/ { s = $4; sub(/s,$/, "", s); print s }' "$out")
  err=$(awk '/Non-2xx/ { e += $NF } /Socket errors/ { gsub(",", ""); e += $4 + $6 + $8 + $10 } END { print e + 0 }' "$out")
  [ -n "$n" ] || { log "WARNING: wrk $t c=$conns printed no result (see $out)"; n=0 secs=1; }
  [ "$n" -ge $((threads * WRK_MAX)) ] && log "WARNING: wrk $t c=$conns reached WRK_MAX; its req/s is a lower bound"
  rps=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
  p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
  p90=$(to_ms "$(awk '$1 == "90%" { print $2 }' "$out")")
  p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  printf 'wrk\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t-\t%s\t%s\t%s\t%s\t%s\t0\n' "$round" "$conns" "$t" \
    "$n" "$err" "$conns" "$secs" "$rps" "$p50" "$p90" "$p99" \
    "$(ticks_ms $((c1 - c0)) "$n")" "$([ -n "$front" ] && ticks_ms $((f1 - f0)) "$n" || echo -)" \
    "$([ -n "$side" ] && ticks_ms $((s1 - s0)) "$n" || echo -)" "$(ticks_ms $((a1 - a0)) "$n")" \
    "$((o1 - o0))" >>"$RESULTS"
  log "  wrk $t c=$conns: $n requests, $rps req/s, p50/p90/p99 $p50 $p90 $p99 ms"
}

# --- the matrix ---------------------------------------------------------------------------------------
read -ra TLIST <<<"$TARGETS"
WRK_TARGETS=()
for t in lookout-token nginx vmauth; do [[ " $TARGETS " == *" $t "* ]] && WRK_TARGETS+=("$t"); done
for ((r = 1; r <= ROUNDS; r++)); do
  # Rotate the order each round so that no target always runs first (or right after another).
  k=$(((r - 1) % ${#TLIST[@]}))
  order=("${TLIST[@]:k}" "${TLIST[@]:0:k}")
  log "round $r/$ROUNDS (order: ${order[*]}); load average $(cut -d' ' -f1-3 /proc/loadavg)"
  for level in $LEVELS; do
    for t in "${order[@]}"; do run_curl "$r" "$level" "$t"; done
  done
  for level in $WRK_LEVELS; do
    for t in "${WRK_TARGETS[@]}"; do run_wrk "$r" "$level" "$t"; done
  done
done

# --- optional profile of the lookout proxy ----------------------------------------------------------
if [ "${PROFILE:-0}" = 1 ]; then
  top=1
  for l in $LEVELS; do [[ "$l" =~ ^[0-9]+$ ]] && [ "$l" -gt "$top" ] && top=$l; done
  log "profiling the lookout proxy: perf record over one more batch of $((3 * REQUESTS)) at c=$top"
  mapfile -t args < <(target_args lookout)
  curl_config_repeat "$BENCH_TMP/row.cfg" "${URL[lookout]}" $(((3 * REQUESTS + top - 1) / top))
  o0=$(tcp_active_opens)
  perf record -q -g -e cpu-clock -F 1999 -p "$PROXY_PID" -o "$BENCH_TMP/perf.data" -- \
    bash -c 'for ((i = 0; i < $1; i++)); do curl -sS --max-time 10 "${@:3}" -K "$2" -o /dev/null >/dev/null 2>&1 & done; wait' \
    _ "$top" "$BENCH_TMP/row.cfg" "${args[@]}" >/dev/null 2>&1 || true
  PROFILE_OPENS=$(($(tcp_active_opens) - o0))
  perf report -i "$BENCH_TMP/perf.data" --no-children --sort dso --stdio -g none >"$BENCH_TMP/report-dso.txt" 2>/dev/null || true
  perf report -i "$BENCH_TMP/perf.data" --no-children --sort sym --stdio -g none >"$BENCH_TMP/report-sym.txt" 2>/dev/null || true
fi

# --- summary ------------------------------------------------------------------------------------------
# Median over rounds of every numeric column, per (tool, level, target); req/s also min-max.
SUMMARY=$BENCH_TMP/summary.tsv
awk -F'\t' '
  function median(key, col,   n, i, j, v, a) {
    n = split(vals[key, col], a, " ")
    for (i = 2; i <= n; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > v + 0; j--) a[j + 1] = a[j]; a[j + 1] = v }
    if (a[1] == "-") return "-"
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    key = $1 SUBSEP $3 SUBSEP $4
    if (!(key in seen)) { seen[key] = 1; order[++k] = key }
    for (c = 5; c <= NF; c++) vals[key, c] = vals[key, c] (vals[key, c] == "" ? "" : " ") $c
    if (!((key, "min") in mm) || $9 + 0 < mm[key, "min"]) mm[key, "min"] = $9 + 0
    if (!((key, "max") in mm) || $9 + 0 > mm[key, "max"]) mm[key, "max"] = $9 + 0
    nf = NF
  }
  END {
    for (i = 1; i <= k; i++) {
      key = order[i]; split(key, p, SUBSEP)
      line = p[1] "\t" p[2] "\t" p[3]
      for (c = 5; c <= nf; c++) line = line "\t" median(key, c)
      print line "\t" mm[key, "min"] "\t" mm[key, "max"]
    }
  }' "$RESULTS" >"$SUMMARY"
# summary columns: 1 tool 2 level 3 target 4 ok 5 err 6 conns 7 wall 8 rps 9 p50 10 p90 11 p99
# 12 bytes 13 client_ms 14 front_ms 15 side_ms 16 agent_ms 17 opens 18 throttled 19 rps_min 20 rps_max

get() { awk -F'\t' -v tool="$1" -v l="$2" -v t="$3" -v c="$4" '$1 == tool && $2 == l && $3 == t { print $c; f = 1 } END { if (!f) print "-" }' "$SUMMARY"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%+.2f", a - b }'; }

commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD 2>/dev/null || commit="$commit (+ uncommitted changes)"
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
nginx_v=$(nginx -v 2>&1 | sed 's/^nginx version: //')
vmauth_v=$(dpkg-query -W -f='${Version}' victoria-metrics 2>/dev/null || echo unknown)
curl_v=$(curl --version | awk 'NR == 1 { print $2 }')
wrk_v=$({ wrk -v 2>&1 || true; } | awk 'NR == 1 { print $2 }')
view_bytes=$(get curl 1 direct 12)

cat <<EOT

=== lookout proxy vs nginx vs vmauth: one container's scrape through a proxy ===
date         $(date -u +%Y-%m-%dT%H:%M:%SZ)
host         $(uname -r), $(nproc) CPUs ($cpu_model), CLK_TCK $CLK_TCK
commit       $commit; binary $LOOKOUT_SRC built $LOOKOUT_BUILT
load         load average $LOAD_START at start, $(cut -d' ' -f1 /proc/loadavg) at end
peers        $nginx_v (nginx-light), TLS front, keep-alive mTLS upstream;
             vmauth (victoria-metrics $vmauth_v), TLS, bearer token -> nginx sidecar (plain HTTP) -> agent
client       curl $curl_v (all rows), wrk $wrk_v (cross-check); HTTP/1.1, keep-alive, encoding $ENCODING
view         runc container $ID, $view_bytes B per response; agent cache_ttl 1s (all paths share the snapshot cache)
lookout      tenant by client certificate (lookout) or bearer token (lookout-token); rate limits ON
             (tenant and source $RATE_LIMIT); throttled during the run: $(awk -F'\t' '$4 ~ /^lookout/ { s += $NF } END { print s + 0 }' "$RESULTS")
method       $ROUNDS rounds (order rotated), median shown; level C = C connections, closed loop,
             $REQUESTS requests per row; pR = 1 connection paced at R/s, $PACED_REQUESTS requests;
             $WARMUP warm-up requests before each row; latency = curl time_total of requests on an
             open connection; *_ms = CPU ms per request (utime+stime deltas; client = all curl processes)

EOT
hdr() { printf '%-5s %-13s %6s %4s %5s %7s %13s %7s %7s %7s %9s %8s %8s %8s %6s\n' \
  level target ok err conns req/s "(min-max)" p50_ms p90_ms p99_ms client_ms front_ms side_ms agent_ms opens; }
# f(VALUE, FORMAT) for the printing awk programs: medians of an even number of rounds are
# means of two, so everything is formatted here; "-" stays "-".
FMT='function f(v, fmt) { return v == "-" ? "-" : sprintf(fmt, v) } '
echo "--- curl (client certificates where the target asks for one) ---"
hdr
for level in $LEVELS; do
  for t in $TARGETS; do
    awk -F'\t' -v l="$level" -v t="$t" "$FMT"'$1 == "curl" && $2 == l && $3 == t {
      printf "%-5s %-13s %6s %4s %5s %7s %13s %7s %7s %7s %9s %8s %8s %8s %6s\n",
        $2, $3, f($4, "%.0f"), f($5, "%.0f"), f($6, "%.0f"), f($8, "%.0f"), "(" $19 "-" $20 ")",
        f($9, "%.2f"), f($10, "%.2f"), f($11, "%.2f"), f($13, "%.3f"), f($14, "%.3f"), f($15, "%.3f"),
        f($16, "%.3f"), f($17, "%.0f") }' "$SUMMARY"
  done
done
cat <<'EOT'
(front = the proxy under test: lookout, nginx's master+workers, vmauth, or the sidecar alone;
side = the nginx sidecar behind vmauth; opens = TCP connections opened on the host during the
row, the client's own included: C for a closed loop that kept its connections)
EOT

echo
echo "--- ratios (curl rows): throughput against nginx, latency added to the direct scrape ---"
printf '%-5s %14s %14s %14s   %-26s %-26s %-26s %-26s %16s\n' level "lookout/nginx" "token/nginx" "vmauth/nginx" \
  "added p50/p99 lookout" "added p50/p99 nginx" "added p50/p99 vmauth" "added p50/p99 sidecar" "cpu lookout/nginx"
for level in $LEVELS; do
  d50=$(get curl "$level" direct 9) d99=$(get curl "$level" direct 11)
  added() { echo "$(minus "$(get curl "$level" "$1" 9)" "$d50") / $(minus "$(get curl "$level" "$1" 11)" "$d99")"; }
  printf '%-5s %14s %14s %14s   %-26s %-26s %-26s %-26s %16s\n' "$level" \
    "$(ratio "$(get curl "$level" lookout 8)" "$(get curl "$level" nginx 8)")" \
    "$(ratio "$(get curl "$level" lookout-token 8)" "$(get curl "$level" nginx 8)")" \
    "$(ratio "$(get curl "$level" vmauth 8)" "$(get curl "$level" nginx 8)")" \
    "$(added lookout)" "$(added nginx)" "$(added vmauth)" "$(added sidecar)" \
    "$(ratio "$(get curl "$level" lookout 14)" "$(get curl "$level" nginx 14)")"
done
echo "(added = percentile through the proxy minus the same percentile direct, in ms: a difference"
echo " of percentiles, not the percentile of a difference; vmauth's includes the sidecar hop)"

if [ -n "$WRK_LEVELS" ]; then
  echo
  echo "--- wrk cross-check (no client certificates: lookout by bearer token; ${WRK_SECONDS}s per row) ---"
  printf '%-5s %-13s %7s %4s %7s %13s %7s %7s %7s %9s %8s %8s %8s %6s\n' \
    conns target requests err req/s "(min-max)" p50_ms p90_ms p99_ms client_ms front_ms side_ms agent_ms opens
  for level in $WRK_LEVELS; do
    for t in "${WRK_TARGETS[@]}"; do
      awk -F'\t' -v l="$level" -v t="$t" "$FMT"'$1 == "wrk" && $2 == l && $3 == t {
        printf "%-5s %-13s %7s %4s %7s %13s %7s %7s %7s %9s %8s %8s %8s %6s\n",
          $2, $3, f($4, "%.0f"), f($5, "%.0f"), f($8, "%.0f"), "(" $19 "-" $20 ")", f($9, "%.2f"),
          f($10, "%.2f"), f($11, "%.2f"), f($13, "%.3f"), f($14, "%.3f"), f($15, "%.3f"), f($16, "%.3f"),
          f($17, "%.0f") }' "$SUMMARY"
    done
    printf '      ratios: lookout-token/nginx %s, vmauth/nginx %s (req/s); cpu lookout/nginx %s\n' \
      "$(ratio "$(get wrk "$level" lookout-token 8)" "$(get wrk "$level" nginx 8)")" \
      "$(ratio "$(get wrk "$level" vmauth 8)" "$(get wrk "$level" nginx 8)")" \
      "$(ratio "$(get wrk "$level" lookout-token 14)" "$(get wrk "$level" nginx 14)")"
  done
fi

echo
echo "--- targets (issue: >= 0.8x nginx's throughput with authentication, authorization and rate limiting; added p99 <= 1 ms) ---"
for level in $LEVELS; do
  [[ "$level" =~ ^[0-9]+$ ]] || continue
  r=$(ratio "$(get curl "$level" lookout 8)" "$(get curl "$level" nginx 8)")
  printf 'throughput c=%-4s lookout/nginx %-5s %s\n' "$level" "$r" \
    "$(awk -v r="$r" 'BEGIN { if (r == "-") print "n/a"; else if (r >= 0.8) print "met"; else print "missed" }')"
done
for level in $WRK_LEVELS; do
  r=$(ratio "$(get wrk "$level" lookout-token 8)" "$(get wrk "$level" nginx 8)")
  printf 'throughput c=%-4s lookout/nginx %-5s %s (wrk, bearer token)\n' "$level" "$r" \
    "$(awk -v r="$r" 'BEGIN { if (r == "-") print "n/a"; else if (r >= 0.8) print "met"; else print "missed" }')"
done
# Latency is judged where the CPUs are not saturated: one connection, back to back or paced.
# With more connections than CPUs every row queues for CPU and p99 is mostly that queue.
for level in $LEVELS; do
  a=$(minus "$(get curl "$level" lookout 11)" "$(get curl "$level" direct 11)")
  if [[ "$level" == 1 || "$level" == p* ]]; then
    v=$(awk -v a="$a" 'BEGIN { if (a == "-") print "n/a"; else if (a + 0 <= 1) print "met"; else print "missed" }')
  else
    v="for information (CPU-saturated: queueing, not proxy work)"
  fi
  printf 'added p99 c=%-5s %-6s ms  %s\n' "$level" "$a" "$v"
done
busy_note

if [ "${PROFILE:-0}" = 1 ]; then
  echo
  echo "=== profile of the lookout proxy (PROFILE=1; one extra batch, not part of the figures) ==="
  echo "$((3 * REQUESTS)) scrapes over $top connections; TCP connections opened meanwhile: $PROFILE_OPENS ($top of them the client's)"
  awk '!/^#/ && NF && n++ < 8 { sub(/ +$/, ""); print }' "$BENCH_TMP/report-dso.txt"
  echo
  awk '!/^#/ && NF && n++ < 40 { sub(/ +$/, ""); print }' "$BENCH_TMP/report-sym.txt"
fi
exit 0
