#!/usr/bin/env bash
# The etcd inventory at fleet scale (issue 4): 100,000 instances over 1,000 nodes and 1,000
# tenants, loaded into a real etcd, then N `lookout proxy` processes with the etcd source:
#   - time from proxy start to /readyz 200 (full read of the prefix + first publish);
#   - each proxy's memory (VmRSS, VmHWM) against the inventory's size in etcd and against
#     a proxy whose prefix is empty (the baseline);
#   - GET /v1/discover latency for the tenant with 10,000 instances (target < 50 ms) and for
#     a tenant with 1, plain and with Accept-Encoding: gzip (as Prometheus sends), over one
#     keep-alive connection — against nginx serving the same body as a static file;
#   - propagation of one new instance to every proxy (target < 2 s), and of its removal.
#
# The benchmark writes etcd directly, as agents would (same key layout and JSON values:
# discovery/src/etcd.rs, discovery/src/model.rs), with `etcdctl txn` batches of 1,000 puts.
# The keys are plain (no lease): a proxy reads and watches keys the same way with or without
# one, and 1,000 agents' keep-alives would only load etcd, not the proxies. No agent runs:
# discovery needs none, and no scrape is measured. Node keys carry 127.0.0.1:AGENT_PORT,
# where nothing listens and nothing connects during the run.
#
# Distribution: instance g (0 ≤ g < NODES × PER_NODE) lives on node n<g / PER_NODE>; every
# (total / BIG)-th instance belongs to tenant `big` (so 10 on each node), instance 1 to
# tenant `small`, and the rest round-robin to TENANTS − 2 tenants t0002…t0999 (≈ 90 each).
#
# It reports; it asserts nothing about timing. Exit 0 once the measurement ran. Everything it
# creates (etcd and its data dir, proxies, nginx, temp files) is removed on exit.
#
# Environment (defaults):
#   NODES=1000 PER_NODE=100 TENANTS=1000 BIG=10000   the inventory (see above)
#   PROXIES=3           lookout proxy processes (started one after another)
#   REQUESTS_BIG=300    /v1/discover requests per row for the big tenant (one connection)
#   REQUESTS_SMALL=2000 per row for the 1-instance tenant
#   WARMUP=20           requests before each row
#   WRK_SECONDS=5       wrk cross-check rows (big tenant, 1 and 4 connections); 0 skips them
#   PROP_ROUNDS=10      propagation rounds (one put and one delete each)
#   TIME_LIMIT=120      seconds a request batch or a wait may take
#   PROXY_ENV=""        VAR=value words put in every proxy's environment (experiments, e.g.
#                       MALLOC_ARENA_MAX=1); printed in the summary
#   PROFILE=0           1: afterwards, perf record proxy 1 over a /v1/discover batch and
#                       over propagation rounds (not part of the figures)
#   LOOKOUT_BIN=<repo>/target/release/lookout  ETCD_PORT=12379  ETCD_PEER_PORT=12380
#   PROXY_PORT=19263 (proxy k listens on PROXY_PORT+k-1; the baseline on PROXY_PORT+9)
#   PROXY_ADMIN_PORT=19273 (likewise)  NGINX_PORT=19453  AGENT_PORT=19164 (never listened on)
set -euo pipefail
# shellcheck source=deploy/bench/lib.sh
. "$(dirname "$0")/lib.sh"

NODES=${NODES:-1000}
PER_NODE=${PER_NODE:-100}
TENANTS=${TENANTS:-1000}
BIG=${BIG:-10000}
PROXIES=${PROXIES:-3}
REQUESTS_BIG=${REQUESTS_BIG:-300}
REQUESTS_SMALL=${REQUESTS_SMALL:-2000}
WARMUP=${WARMUP:-20}
WRK_SECONDS=${WRK_SECONDS:-5}
PROP_ROUNDS=${PROP_ROUNDS:-10}
TIME_LIMIT=${TIME_LIMIT:-120}
PROFILE=${PROFILE:-0}
PROXY_ENV=${PROXY_ENV:-}
ETCD_PORT=${ETCD_PORT:-12379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-12380}
PROXY_PORT=${PROXY_PORT:-19263}
PROXY_ADMIN_PORT=${PROXY_ADMIN_PORT:-19273}
NGINX_PORT=${NGINX_PORT:-19453}
PREFIX=/lookout/
TXN_OPS=1000
# Far above what the run offers, but ON: every request still goes through both limiters.
RATE_LIMIT='{ per_second = 100000.0, burst = 100000 }'

# --- prerequisites ------------------------------------------------------------------------------
need_root
need_lookout
need etcd etcd-server
need etcdctl etcd-client
need curl curl
need jq jq
need nginx nginx-light
need timeout coreutils
need sha256sum coreutils
need pgrep procps
need python3 python3
[ "$WRK_SECONDS" -gt 0 ] && need wrk wrk
[ "$PROFILE" = 1 ] && need perf linux-perf
for w in $PROXY_ENV; do [[ "$w" =~ ^[A-Z_][A-Z0-9_]*=[^[:space:]]*$ ]] || die "PROXY_ENV: '$w' is not VAR=value"; done
for v in NODES PER_NODE TENANTS BIG PROXIES REQUESTS_BIG REQUESTS_SMALL PROP_ROUNDS TIME_LIMIT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer"
[[ "$WRK_SECONDS" =~ ^[0-9]+$ ]] || die "WRK_SECONDS must be a non-negative integer"
[ "$PROXIES" -le 9 ] || die "PROXIES must be at most 9 (ports PROXY_PORT..+8; +9 is the baseline)"
TOTAL=$((NODES * PER_NODE))
[ $((TOTAL % BIG)) -eq 0 ] && [ $((TOTAL / BIG)) -ge 2 ] ||
  die "BIG ($BIG) must divide NODES*PER_NODE ($TOTAL) and be at most half of it"
[ "$TENANTS" -ge 3 ] || die "TENANTS must be at least 3 (big, small and one more)"
[ "$NODES" -le 9999 ] || die "NODES must be at most 9999 (node ids n0000…n9999)"
for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$NGINX_PORT" $(seq "$PROXY_PORT" $((PROXY_PORT + 9))) \
  $(seq "$PROXY_ADMIN_PORT" $((PROXY_ADMIN_PORT + 9))); do
  port_free "$p" || die "127.0.0.1:$p is in use (see the *_PORT variables)"
done

# Load-generator and poller processes in flight: ended (by pid) on exit, before the servers.
LOAD_PIDS=()
etcd_bench_cleanup() {
  local rc=$? pid
  # Off before `(exit "$rc")`: under errexit that line would end the trap right there, and
  # bench_cleanup (which stops etcd and the proxies) would never run after a failure.
  set +e
  for pid in "${LOAD_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  (exit "$rc")
  bench_cleanup
}
trap etcd_bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bench_tmp
# nginx's workers (user nobody) must reach $BENCH_TMP/www: traverse only, no listing. The keys
# stay 0600.
chmod 711 "$BENCH_TMP"
lookout_pki "$BENCH_TMP"
chmod 600 "$BENCH_TMP"/*-key.pem "$BENCH_TMP"/pki/*-key.pem
COMMIT=$(git -C "$REPO" log -1 --format=%h 2>/dev/null || echo unknown)
EC=(etcdctl "--endpoints=http://127.0.0.1:$ETCD_PORT" --command-timeout=30s)

# --- etcd -----------------------------------------------------------------------------------------
log "starting etcd on 127.0.0.1:$ETCD_PORT (data dir in $BENCH_TMP)"
bg_start etcd etcd --name bench --data-dir "$BENCH_TMP/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
  --max-txn-ops "$TXN_OPS" --logger zap --log-level warn
ETCD_PID=$BG_PID
wait_until 60 "${EC[@]}" endpoint health ||
  die "etcd not healthy within 60 s; log: $(tail -20 "$BENCH_TMP/etcd.log")"
ETCD_VERSION=$(etcd --version | awk '/etcd Version/ { print $3 }')

# --- the inventory --------------------------------------------------------------------------------
# One `etcdctl txn` input per TXN_OPS puts (no compares, no failure ops). Values are JSON as
# serde writes Node and Instance; in the txn syntax they are Go-quoted strings, hence \".
# Also writes $BENCH_TMP/inventory.env: RAW_BYTES (keys + values), counts per kind.
log "generating $TOTAL instances on $NODES nodes for $TENANTS tenants"
mkdir "$BENCH_TMP/txn"
awk -v nodes="$NODES" -v per="$PER_NODE" -v tenants="$TENANTS" -v big="$BIG" -v ops="$TXN_OPS" \
  -v prefix="$PREFIX" -v agent="127.0.0.1:$AGENT_PORT" -v dir="$BENCH_TMP/txn" '
  function h32(x, k, c) { return (x * k + c) % 4294967296 }
  function put(key, json,   q) {
    if (op % ops == 0) { file = sprintf("%s/%05d.txn", dir, op / ops); printf "\n" >file }
    q = json; gsub(/"/, "\\\"", q)
    printf "put %s \"%s\"\n", key, q >file
    raw += length(key) + length(json); op++
    if (op % ops == 0) { printf "\n\n" >file; close(file) }
  }
  BEGIN {
    total = nodes * per; stride = total / big
    for (n = 0; n < nodes; n++) {
      node = sprintf("n%04d", n)
      put(prefix "nodes/" node, sprintf("{\"id\":\"%s\",\"agent\":\"%s\",\"hostname\":\"%s.bench.internal\"}", node, agent, node))
    }
    other = 0
    for (g = 0; g < total; g++) {
      node = sprintf("n%04d", int(g / per))
      if (g % stride == 0) { tenant = "big"; nbig++ }
      else if (g == 1) { tenant = "small"; nsmall++ }
      else { tenant = sprintf("t%04d", 2 + other % (tenants - 2)); other++ }
      a = h32(g, 2654435761, 7); b = h32(g, 40503, 12345)
      id = sprintf("%08x-%04x-4%03x-a%03x-%012d", a, b % 65536, g % 4096, a % 4096, g)
      rid = sprintf("%08x%08x%08x%08x%08x%08x%08x%08x", a, b, h32(g, 69069, 1), h32(g, 1664525, 1013904223),
        h32(g, 22695477, 1), h32(g, 1103515245, 12345), h32(g, 134775813, 1), h32(g, 214013, 2531011))
      alias = sprintf("%s-app-%d", tenant, g % 1000)
      grp = sprintf("g%d", g % 10)
      json = sprintf("{\"id\":\"%s\",\"runtime_id\":\"%s\",\"node\":\"%s\",\"tenant\":\"%s\",\"alias\":\"%s\"," \
        "\"groups\":[\"%s\",\"prod\"],\"image\":\"registry.bench.internal/%s/app:1.%d.0\",\"source\":\"runc\"," \
        "\"labels\":{\"bundle\":\"/run/containerd/io.containerd.runtime.v2.task/k8s.io/%s\"," \
        "\"io.kubernetes.pod.name\":\"%s\",\"io.kubernetes.pod.namespace\":\"%s\"," \
        "\"lookout.groups\":\"%s,prod\",\"lookout.tenant\":\"%s\"}}",
        id, rid, node, tenant, alias, grp, tenant, g % 20, rid, alias, tenant, grp, tenant)
      put(prefix "instances/" node "/" id, json)
      if (g == 0) sample = json
    }
    if (op % ops != 0) { printf "\n\n" >file; close(file) }
    printf "RAW_BYTES=%d\nKEYS=%d\nN_BIG=%d\nN_SMALL=%d\nVALUE_BYTES_SAMPLE=%d\n", raw, op, nbig, nsmall, length(sample) >(dir "/../inventory.env")
  }'
# shellcheck source=/dev/null
. "$BENCH_TMP/inventory.env"
[ "$N_BIG" = "$BIG" ] && [ "$N_SMALL" = 1 ] || die "generator: big=$N_BIG small=$N_SMALL"

log "loading $KEYS keys into etcd ($(find "$BENCH_TMP/txn" -name '*.txn' | wc -l) txns of up to $TXN_OPS puts)"
w0=$EPOCHREALTIME
for f in "$BENCH_TMP"/txn/*.txn; do
  out=$(timeout 60 "${EC[@]}" txn <"$f" 2>&1) || die "etcdctl txn $f failed: $out"
  [ "${out%%$'\n'*}" = SUCCESS ] || die "etcdctl txn $f: ${out:0:300}"
done
LOAD_S=$(awk -v a="$w0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
rm -rf "$BENCH_TMP/txn"
COUNT=$("${EC[@]}" get "$PREFIX" --prefix --limit 1 -w json | jq -r '.count')
[ "$COUNT" = "$KEYS" ] || die "etcd holds $COUNT keys under $PREFIX, expected $KEYS"
read -r DB_SIZE DB_IN_USE < <("${EC[@]}" endpoint status -w json |
  jq -r '.[0].Status | "\(.dbSize) \(.dbSizeInUse // .dbSize)"')
ETCD_RSS=$(status_kb "$ETCD_PID" VmRSS)
log "loaded in $LOAD_S s: $COUNT keys, raw $RAW_BYTES B, etcd db $DB_SIZE B (in use $DB_IN_USE), etcd VmRSS $ETCD_RSS kB"

# --- tenants and proxies -------------------------------------------------------------------------
token() { printf 'bench-%s-%s' "$1" "$SALT"; }
SALT=$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')
{
  printf '[defaults]\nrate_limit = %s\n' "$RATE_LIMIT"
  for t in big small; do
    printf '[[tenant]]\nname = "%s"\ntoken_sha256 = ["%s"]\n' "$t" "$(token "$t" | sha256sum | cut -d' ' -f1)"
  done
  # The others authenticate by certificate name only (no hashing 998 tokens for nothing).
  for ((i = 2; i < TENANTS; i++)); do printf '[[tenant]]\nname = "t%04d"\n' "$i"; done
} >"$BENCH_TMP/tenants.toml"

# proxy_conf NAME OFFSET PREFIX: $BENCH_TMP/proxy-NAME.toml, listening on PROXY_PORT+OFFSET
# (admin: PROXY_ADMIN_PORT+OFFSET).
proxy_conf() {
  local k=$1 off=$2 prefix=$3
  {
    proxy_toml_head $((PROXY_PORT + off)) $((PROXY_ADMIN_PORT + off))
    cat <<EOF
[inventory]
source = "etcd"
endpoints = ["http://127.0.0.1:$ETCD_PORT"]
prefix = "$prefix"
[limits]
source = $RATE_LIMIT
EOF
  } >"$BENCH_TMP/proxy-$k.toml"
  "$LOOKOUT_BIN" proxy --config "$BENCH_TMP/proxy-$k.toml" --check-config >"$BENCH_TMP/proxy-check.log" 2>&1 ||
    die "proxy --check-config failed: $(cat "$BENCH_TMP/proxy-check.log")"
}

proxy_url() { echo "https://127.0.0.1:$((PROXY_PORT + $1 - 1))$2"; }
ready() {
  [ "$(curl -s --max-time 5 --cacert "$BENCH_TMP/ca.pem" -o /dev/null -w '%{http_code}' "$(proxy_url "$1" /readyz)")" = 200 ]
}
# discover K TENANT [CURL ARGS…]: the body of /v1/discover on proxy K as TENANT.
discover() {
  local k=$1 t=$2
  shift 2
  curl -sS --fail --max-time 10 --cacert "$BENCH_TMP/ca.pem" -H "Authorization: Bearer $(token "$t")" \
    "$@" "$(proxy_url "$k" /v1/discover)"
}
admin_metric() {
  curl -sS --max-time 5 "http://127.0.0.1:$((PROXY_ADMIN_PORT + $1 - 1))/metrics" |
    awk -v m="$2" '$1 == m { print $2 }'
}

# start_proxy K: starts proxy K and waits for /readyz 200 (polled every 20 ms); sets READY_S
# (seconds from start to the first 200) and READY_CPU_S (the proxy's CPU until then).
declare -A PROXY_PID READY RCPU ECPU RSS0 HWM0
start_proxy() {
  local k=$1 t0 e0 deadline=$((SECONDS + TIME_LIMIT))
  e0=$(cpu_ticks "$ETCD_PID")
  t0=$EPOCHREALTIME
  # shellcheck disable=SC2086 # PROXY_ENV is a list of VAR=value words
  LOOKOUT_LOG=${LOOKOUT_LOG:-info} bg_start "proxy-$k" env $PROXY_ENV "$LOOKOUT_BIN" proxy --config "$BENCH_TMP/proxy-$k.toml"
  PROXY_PID[$k]=$BG_PID
  until ready "$k"; do
    kill -0 "${PROXY_PID[$k]}" 2>/dev/null || die "proxy $k exited; log: $(tail -20 "$BENCH_TMP/proxy-$k.log")"
    [ "$SECONDS" -lt "$deadline" ] ||
      die "proxy $k not ready within ${TIME_LIMIT} s; log: $(tail -20 "$BENCH_TMP/proxy-$k.log")"
    sleep 0.02
  done
  READY[$k]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  RCPU[$k]=$(awk -v t="$(cpu_ticks "${PROXY_PID[$k]}")" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
  ECPU[$k]=$(awk -v t=$(($(cpu_ticks "$ETCD_PID") - e0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
}

# The baseline: one proxy on a prefix with no keys, for the memory of a proxy without inventory.
proxy_conf base 9 /lookout-empty/
BASE_PORT=$((PROXY_PORT + 9))
for ((k = 1; k <= PROXIES; k++)); do proxy_conf "$k" $((k - 1)) "$PREFIX"; done

for ((k = 1; k <= PROXIES; k++)); do
  log "starting proxy $k"
  start_proxy "$k"
  log "proxy $k ready after ${READY[$k]} s (CPU ${RCPU[$k]} s); VmRSS $(status_kb "${PROXY_PID[$k]}" VmRSS) kB"
done
log "starting the baseline proxy (empty prefix)"
# shellcheck disable=SC2086
LOOKOUT_LOG=${LOOKOUT_LOG:-info} bg_start proxy-base env $PROXY_ENV "$LOOKOUT_BIN" proxy --config "$BENCH_TMP/proxy-base.toml"
BASE_PID=$BG_PID
wait_until 30 curl -sS --fail --max-time 5 --cacert "$BENCH_TMP/ca.pem" -o /dev/null "https://127.0.0.1:$BASE_PORT/readyz" ||
  die "baseline proxy not ready within 30 s; log: $(tail -20 "$BENCH_TMP/proxy-base.log")"

# Correctness first: every proxy serves the whole inventory and each tenant its own.
for ((k = 1; k <= PROXIES; k++)); do
  n=$(admin_metric "$k" lookout_proxy_inventory_instances)
  [ "$n" = "$TOTAL" ] || die "proxy $k holds $n instances, expected $TOTAL"
  n=$(discover "$k" big | jq '.containers | length')
  [ "$n" = "$BIG" ] || die "proxy $k: /v1/discover for big lists $n, expected $BIG"
  n=$(discover "$k" small | jq '.containers | length')
  [ "$n" = 1 ] || die "proxy $k: /v1/discover for small lists $n, expected 1"
done
[ "$(curl -sS --max-time 10 --cacert "$BENCH_TMP/ca.pem" -o /dev/null -w '%{http_code}' "$(proxy_url 1 /v1/discover)")" = 401 ] ||
  die "an unauthenticated /v1/discover was not refused with 401"
sleep 2
for ((k = 1; k <= PROXIES; k++)); do
  RSS0[$k]=$(status_kb "${PROXY_PID[$k]}" VmRSS)
  HWM0[$k]=$(status_kb "${PROXY_PID[$k]}" VmHWM)
done
BASE_RSS=$(status_kb "$BASE_PID" VmRSS)
BASE_HWM=$(status_kb "$BASE_PID" VmHWM)
PROXY_REPLICAS=$(admin_metric 1 lookout_proxy_replicas)

# --- nginx: the same bodies as static files (the peer) ---------------------------------------------
mkdir -p "$BENCH_TMP/www/big" "$BENCH_TMP/www/small" "$BENCH_TMP/nginx"
discover 1 big >"$BENCH_TMP/www/big/discover.json"
discover 1 small >"$BENCH_TMP/www/small/discover.json"
chmod -R a+rX "$BENCH_TMP/www"
BIG_BYTES=$(stat -c %s "$BENCH_TMP/www/big/discover.json")
SMALL_BYTES=$(stat -c %s "$BENCH_TMP/www/small/discover.json")
GZ_BYTES=$(gzip -1 -c "$BENCH_TMP/www/big/discover.json" | wc -c)
PROXY_CE=$(discover 1 big -H 'Accept-Encoding: gzip' -o /dev/null -D - | awk 'tolower($1) == "content-encoding:" { print $2 }' | tr -d '\r')
d=$BENCH_TMP/nginx
cat >"$d/nginx.conf" <<EOF
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
  sendfile on;
  types { application/json json; }
  gzip on;
  gzip_types application/json;
  gzip_min_length 256;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl;
    ssl_certificate $BENCH_TMP/server.pem;
    ssl_certificate_key $BENCH_TMP/server-key.pem;
    keepalive_requests 1000000;
    root $BENCH_TMP/www;
  }
}
EOF
nginx -t -q -p "$d" -c "$d/nginx.conf" >"$d/test.log" 2>&1 || die "nginx -t failed: $(cat "$d/test.log")"
log "starting nginx (static copies of the discover bodies)"
bg_start nginx nginx -p "$d" -c "$d/nginx.conf" -g 'daemon off;'
NGINX_PID=$BG_PID
NGINX_URL="https://127.0.0.1:$NGINX_PORT"
wait_until 30 curl -sS --fail --max-time 5 --cacert "$BENCH_TMP/ca.pem" -o /dev/null "$NGINX_URL/big/discover.json" ||
  die "nginx does not serve the static body; log: $(cat "$d/error.log")"

# --- /v1/discover latency ---------------------------------------------------------------------------
ticks_ms() { awk -v d="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { if (n > 0) printf "%.3f", d / hz / n * 1000; else print "-" }'; }
LAT=$BENCH_TMP/latency.tsv
: >"$LAT"

# lat_row SERVER TENANT ENC COUNT: COUNT requests over one keep-alive connection (curl) after
# WARMUP; appends "server tenant enc ok err conns p50 p90 p99 bytes cpu_ms/req" to $LAT.
lat_row() {
  local server=$1 tenant=$2 enc=$3 count=$4 url pid args=(--http1.1 --cacert "$BENCH_TMP/ca.pem")
  if [ "$server" = lookout ]; then
    url=$(proxy_url 1 /v1/discover) pid=${PROXY_PID[1]}
    args+=(-H "Authorization: Bearer $(token "$tenant")")
  else
    url=$NGINX_URL/$tenant/discover.json pid=$NGINX_PID
  fi
  [ "$enc" = gzip ] && args+=(-H 'Accept-Encoding: gzip')
  if [ "$WARMUP" -gt 0 ]; then
    curl_config_repeat "$BENCH_TMP/warmup.cfg" "$url" "$WARMUP"
    curl_batch "$BENCH_TMP/warmup.cfg" "$BENCH_TMP/warmup.out" "$TIME_LIMIT" "${args[@]}"
  fi
  curl_config_repeat "$BENCH_TMP/row.cfg" "$url" "$count"
  local f0 f1 out=$BENCH_TMP/row.out
  f0=$(tree_ticks "$pid")
  curl_batch "$BENCH_TMP/row.cfg" "$out" "$TIME_LIMIT" "${args[@]}"
  f1=$(tree_ticks "$pid")
  local ok err conns pct bytes
  ok=$(awk '$1 == 200' "$out" | wc -l)
  err=$(awk '$1 != 200' "$out" | wc -l)
  conns=$(awk '{ s += $4 } END { print s + 0 }' "$out")
  # Requests on the open connection only (the first also carries the TLS handshake).
  awk '$1 == 200 && $4 == 0' "$out" >"$out.ok"
  pct=$(percentiles "$out.ok" 2)
  bytes=$(awk '{ s += $3 } END { printf "%d", (NR ? s / NR : 0) }' "$out.ok")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$tenant" "$enc" "$ok" "$err" "$conns" \
    "$(tr ' ' '\t' <<<"$pct")" "$bytes" "$(ticks_ms $((f1 - f0)) "$ok")" >>"$LAT"
  log "  $server $tenant $enc: $ok ok, $err failed, p50/p90/p99 $pct ms, $bytes B"
}

log "measuring /v1/discover latency (proxy 1) and nginx's static copy"
for enc in plain gzip; do
  lat_row lookout big "$enc" "$REQUESTS_BIG"
  lat_row nginx big "$enc" "$REQUESTS_BIG"
  lat_row lookout small "$enc" "$REQUESTS_SMALL"
  lat_row nginx small "$enc" "$REQUESTS_SMALL"
done

# wrk cross-check: big tenant, plain, 1 and 4 connections, time-bound.
to_ms() { awk -v v="$1" 'BEGIN { u = v; sub(/^[0-9.]+/, "", u); x = v + 0
  if (u == "us") x /= 1000; else if (u == "s") x *= 1000; printf "%.2f", x }'; }
WRK=$BENCH_TMP/wrk.tsv
: >"$WRK"
wrk_row() {
  local server=$1 conns=$2 url pid threads=1 out=$BENCH_TMP/wrk.out hdr=()
  if [ "$server" = lookout ]; then
    url=$(proxy_url 1 /v1/discover) pid=${PROXY_PID[1]} hdr=(-H "Authorization: Bearer $(token big)")
  else
    url=$NGINX_URL/big/discover.json pid=$NGINX_PID
  fi
  [ "$conns" -gt 1 ] && threads=2
  local f0 f1 n secs rps
  f0=$(tree_ticks "$pid")
  timeout --kill-after=5 $((WRK_SECONDS + 30)) wrk -t "$threads" -c "$conns" -d "${WRK_SECONDS}s" \
    --timeout 10s --latency "${hdr[@]}" "$url" >"$out" 2>&1 || true
  f1=$(tree_ticks "$pid")
  n=$(awk '/requests in/ { print $1 }' "$out")
  secs=$(awk '/requests in/ { s = $4; sub(/s,$/, "", s); print s }' "$out")
  [ -n "$n" ] || { log "WARNING: wrk $server c=$conns printed no result: $(head -c 300 "$out")"; return 0; }
  rps=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$conns" "$n" "$rps" \
    "$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")" "$(to_ms "$(awk '$1 == "90%" { print $2 }' "$out")")" \
    "$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")" "$(ticks_ms $((f1 - f0)) "$n")" >>"$WRK"
  log "  wrk $server c=$conns: $n requests, $rps req/s"
}
if [ "$WRK_SECONDS" -gt 0 ]; then
  log "wrk cross-check (big tenant, plain)"
  for c in 1 4; do
    wrk_row lookout "$c"
    wrk_row nginx "$c"
  done
fi

# --- propagation -----------------------------------------------------------------------------------
# etcd-propagation.py: per round, put one new instance of tenant `small` on node n0000
# through etcd's JSON gateway and poll every proxy (admin gauge
# lookout_proxy_inventory_instances, one kept-alive connection each, round-robin, 2 ms between
# cycles) until it serves one instance more, then confirm with /v1/discover; then delete it
# and poll until the count is back. Times run from just before the write to the poll that
# saw it. See the helper's docstring for why the gauge and not /v1/discover is polled.
PROP=$BENCH_TMP/propagation.tsv
PROP_ARGS=()
PROP_PIDS=""
for ((k = 1; k <= PROXIES; k++)); do
  PROP_ARGS+=("http://127.0.0.1:$((PROXY_ADMIN_PORT + k - 1)),$(proxy_url "$k" /v1/discover)")
  PROP_PIDS+="${PROP_PIDS:+,}${PROXY_PID[$k]}"
done
# prop_rounds ROUNDS TAG OUT: runs the helper, bounded by count and time.
prop_rounds() {
  timeout --kill-after=5 $(($1 * 2 * TIME_LIMIT + 30)) python3 "$BENCH_DIR/etcd-propagation.py" \
    --etcd "http://127.0.0.1:$ETCD_PORT" --key "${PREFIX}instances/n0000/" --node n0000 \
    --tenant small --token "$(token small)" --ca "$BENCH_TMP/ca.pem" --rounds "$1" --tag "$2" \
    --time-limit "$TIME_LIMIT" --pids "$PROP_PIDS" "${PROP_ARGS[@]}" >"$3" 2>"$3.err" ||
    die "propagation rounds failed: $(cat "$3.err")"
}
declare -A PT0 PT1
log "propagation: $PROP_ROUNDS rounds of put + delete of one instance"
for ((k = 1; k <= PROXIES; k++)); do PT0[$k]=$(cpu_ticks "${PROXY_PID[$k]}"); done
PW0=$EPOCHREALTIME
prop_rounds "$PROP_ROUNDS" probe "$PROP"
PROP_WALL=$(awk -v a="$PW0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
for ((k = 1; k <= PROXIES; k++)); do PT1[$k]=$(cpu_ticks "${PROXY_PID[$k]}"); done
while IFS=$'\t' read -r op w c ms rss; do
  log "  $op: write $w ms, poll cycle $c ms, per proxy $ms ms; VmRSS $rss kB"
done <"$PROP"

# --- memory at the end --------------------------------------------------------------------------------
declare -A RSS1 HWM1
for ((k = 1; k <= PROXIES; k++)); do
  RSS1[$k]=$(status_kb "${PROXY_PID[$k]}" VmRSS)
  HWM1[$k]=$(status_kb "${PROXY_PID[$k]}" VmHWM)
done
ETCD_RSS_END=$(status_kb "$ETCD_PID" VmRSS)

# --- profile (optional) -------------------------------------------------------------------------------
if [ "$PROFILE" = 1 ]; then
  log "PROFILE=1: perf record of proxy 1 over a /v1/discover batch (big, plain)"
  curl_config_repeat "$BENCH_TMP/row.cfg" "$(proxy_url 1 /v1/discover)" "$REQUESTS_BIG"
  timeout 120 perf record -F 999 -g -p "${PROXY_PID[1]}" -o "$BENCH_TMP/perf-discover.data" \
    >"$BENCH_TMP/perf.log" 2>&1 &
  PERF_PID=$!
  LOAD_PIDS+=("$PERF_PID")
  sleep 1
  curl_batch "$BENCH_TMP/row.cfg" "$BENCH_TMP/prof.out" "$TIME_LIMIT" --http1.1 --cacert "$BENCH_TMP/ca.pem" \
    -H "Authorization: Bearer $(token big)"
  kill -INT "$PERF_PID" 2>/dev/null
  wait "$PERF_PID" 2>/dev/null || true
  log "PROFILE=1: perf record of proxy 1 over 5 propagation rounds"
  timeout 120 perf record -F 999 -g -p "${PROXY_PID[1]}" -o "$BENCH_TMP/perf-publish.data" \
    >>"$BENCH_TMP/perf.log" 2>&1 &
  PERF_PID=$!
  LOAD_PIDS+=("$PERF_PID")
  sleep 1
  prop_rounds 5 prof "$BENCH_TMP/prop-prof.tsv"
  kill -INT "$PERF_PID" 2>/dev/null
  wait "$PERF_PID" 2>/dev/null || true
fi

# --- summary --------------------------------------------------------------------------------------------
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
pct_of() { # pct_of FILE COL P: nearest-rank percentile P of a column
  awk -v c="$2" '{ print $c }' "$1" | sort -g | awk -v p="$3" '{ v[NR] = $1 } END { k = int((p * NR + 99) / 100); if (k < 1) k = 1; print v[k] }'
}
lat() { awk -F'\t' -v s="$1" -v t="$2" -v e="$3" -v c="$4" '$1 == s && $2 == t && $3 == e { print $c }' "$LAT"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "-" }'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { if (v < t) print "met"; else printf "missed (%.1fx)\n", v / t }'; }

{
  echo "=== lookout proxies on an etcd inventory ==="
  echo "date          $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host          $(uname -r), $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo | awk '{ print $1, $2 }')), CLK_TCK $CLK_TCK"
  echo "commit        $COMMIT; binary $LOOKOUT_SRC built $LOOKOUT_BUILT"
  echo "load          load average $LOAD_START at start, $(cut -d' ' -f1 /proc/loadavg) at end"
  echo "etcd          $ETCD_VERSION, one member on 127.0.0.1, data dir in /tmp; keys written plain (no lease) by etcdctl txn, $TXN_OPS puts per txn"
  echo "inventory     $TOTAL instances on $NODES nodes ($PER_NODE each), $TENANTS tenants: big $BIG, small 1, $((TENANTS - 2)) others ~$(((TOTAL - BIG - 1) / (TENANTS - 2))) each"
  echo "              $KEYS keys, raw keys+values $(mib $((RAW_BYTES / 1024))) MiB (instance value ~$VALUE_BYTES_SAMPLE B); loaded in $LOAD_S s"
  echo "              etcd db size $(mib $((DB_SIZE / 1024))) MiB (in use $(mib $((DB_IN_USE / 1024))) MiB); etcd VmRSS $(mib "$ETCD_RSS") MiB after load, $(mib "$ETCD_RSS_END") MiB at end"
  echo "proxies       $PROXIES x lookout proxy, [inventory] source = \"etcd\", started one after another; replicas seen $PROXY_REPLICAS${PROXY_ENV:+; environment: $PROXY_ENV}"
  echo
  echo "start and memory           ready_s  cpu_s etcd_cpu_s  VmRSS_MiB VmHWM_MiB  (after load)  VmRSS_MiB VmHWM_MiB (at end)"
  for ((k = 1; k <= PROXIES; k++)); do
    printf 'proxy %-20s %7s %6s %10s %10s %9s               %9s %9s\n' "$k" "${READY[$k]}" "${RCPU[$k]}" "${ECPU[$k]}" \
      "$(mib "${RSS0[$k]}")" "$(mib "${HWM0[$k]}")" "$(mib "${RSS1[$k]}")" "$(mib "${HWM1[$k]}")"
  done
  printf 'baseline (empty prefix)          -      -          - %10s %9s\n' "$(mib "$BASE_RSS")" "$(mib "$BASE_HWM")"
  awk -v r="${RSS0[1]}" -v b="$BASE_RSS" -v n="$TOTAL" -v raw="$RAW_BYTES" -v db="$DB_SIZE" -v e="$ETCD_RSS" -v h="${HWM1[1]}" 'BEGIN {
    printf "per instance  (proxy 1 VmRSS - baseline) / instances = %.0f B; raw key+value %.0f B\n", (r - b) * 1024 / n, raw / n
    printf "ratios        proxy VmRSS / raw inventory %.1f; / etcd db size %.1f; / etcd VmRSS %.2f; VmHWM at end / raw %.1f\n",
      r * 1024 / raw, r * 1024 / db, r / e, h * 1024 / raw }'
  echo
  echo "GET /v1/discover on proxy 1 (HTTPS, bearer token), one keep-alive connection (curl), after $WARMUP warm-up;"
  echo "nginx = the same body as a static file over TLS (gzip: on the fly, level 1). Latency of requests on the open connection."
  echo "big: $BIG instances, $BIG_BYTES B JSON ($GZ_BYTES B gzip -1); small: 1 instance, $SMALL_BYTES B. proxy Content-Encoding with Accept-Encoding gzip: '${PROXY_CE:-none}'"
  printf '%-8s %-6s %-6s %6s %4s %5s %8s %8s %8s %9s %10s\n' server tenant enc ok err conns p50_ms p90_ms p99_ms bytes cpu_ms/req
  awk -F'\t' '{ printf "%-8s %-6s %-6s %6s %4s %5s %8s %8s %8s %9s %10s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' "$LAT"
  echo
  echo "ratio lookout / nginx      p50     p99  cpu/req"
  for t in big small; do
    for enc in plain gzip; do
      printf '%-6s %-6s         %7s %7s %8s\n' "$t" "$enc" "$(ratio "$(lat lookout "$t" "$enc" 7)" "$(lat nginx "$t" "$enc" 7)")" \
        "$(ratio "$(lat lookout "$t" "$enc" 9)" "$(lat nginx "$t" "$enc" 9)")" \
        "$(ratio "$(lat lookout "$t" "$enc" 11)" "$(lat nginx "$t" "$enc" 11)")"
    done
  done
  if [ -s "$WRK" ]; then
    echo
    echo "wrk cross-check (big, plain, ${WRK_SECONDS} s per row)"
    printf '%-8s %5s %8s %8s %8s %8s %8s %10s\n' server conns requests req/s p50_ms p90_ms p99_ms cpu_ms/req
    awk -F'\t' '{ printf "%-8s %5s %8s %8s %8s %8s %8s %10s\n", $1, $2, $3, $4, $5, $6, $7, $8 }' "$WRK"
  fi
  echo
  echo "propagation ($PROP_ROUNDS rounds; ms from just before the etcd write to the first poll that saw it, per proxy)"
  awk -F'\t' '{ split($4, a, " "); m = 0; for (i in a) if (a[i] + 0 > m) m = a[i] + 0
    printf "%s\t%s\t%s\t%s\n", $1, $2, $3, m }' "$PROP" >"$PROP.max"
  for op in put del; do
    awk -F'\t' -v o="$op" '$1 == o' "$PROP.max" >"$PROP.$op"
    printf '%-4s max over proxies: p50 %s ms, max %s ms | the etcd write itself: p50 %s ms | poll cycle (all proxies): p50 %s ms\n' \
      "$op" "$(pct_of "$PROP.$op" 4 50)" "$(pct_of "$PROP.$op" 4 100)" "$(pct_of "$PROP.$op" 2 50)" "$(pct_of "$PROP.$op" 3 50)"
  done
  printf 'proxy CPU over the propagation phase (%s s, %d changes, polls included): ' "$PROP_WALL" $((2 * PROP_ROUNDS))
  for ((k = 1; k <= PROXIES; k++)); do
    printf '%s ' "$(ticks_ms $((PT1[$k] - PT0[$k])) $((2 * PROP_ROUNDS)))"
  done
  echo "ms per change (proxy 1..$PROXIES)"
  echo "all rounds (op, write_ms, poll_cycle_ms, ms per proxy, VmRSS kB per proxy after it):"
  sed 's/^/  /' "$PROP"
  echo
  echo "targets                                    measured   target   verdict"
  p50=$(lat lookout big plain 7)
  p99=$(lat lookout big plain 9)
  printf '/v1/discover, %6s instances, p50 ms  %9s     < 50   %s\n' "$BIG" "$p50" "$(verdict "$p50" 50)"
  printf '/v1/discover, %6s instances, p99 ms  %9s     < 50   %s\n' "$BIG" "$p99" "$(verdict "$p99" 50)"
  p99=$(lat lookout big gzip 9)
  printf '  same with Accept-Encoding: gzip, p99  %9s     < 50   %s\n' "$p99" "$(verdict "$p99" 50)"
  m=$(pct_of "$PROP.put" 4 100)
  printf 'propagation to all proxies, max ms      %9s   < 2000   %s\n' "$m" "$(verdict "$m" 2000)"
  busy_note
} >"$BENCH_TMP/summary.txt"
cat "$BENCH_TMP/summary.txt"
if [ "$PROFILE" = 1 ]; then
  echo
  echo "=== profile of proxy 1 (PROFILE=1; extra batches, not part of the figures above) ==="
  for p in discover publish; do
    echo "--- $p: top symbols (self) ---"
    perf report -i "$BENCH_TMP/perf-$p.data" --no-children --sort dso,symbol --stdio -g none \
      >"$BENCH_TMP/perf-$p.txt" 2>/dev/null || true
    grep -v '^#' "$BENCH_TMP/perf-$p.txt" | grep '%' | sed -n 1,25p || true
  done
fi
