# Shared helpers of the lookout agent benchmarks; sourced by the scripts in this directory.
# Nothing here starts anything by itself. Every helper that creates something records it in
# a variable that bench_cleanup (run from the scripts' EXIT trap) undoes.
#
# Network rule: every URL built here points at 127.0.0.1; every request loop is bounded in
# count (a fixed URL list) and in time (`timeout`).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/../.." && pwd)
LOOKOUT_BIN=${LOOKOUT_BIN:-$REPO/target/release/lookout}
CG=/sys/fs/cgroup
# v1 controllers a container is placed in (plus the controller-less v2 tree at $CG/unified).
V1_CTRLS=(cpu cpuacct cpuset memory blkio pids)
CLK_TCK=$(getconf CLK_TCK)

# State for cleanup.
BENCH_TMP=""          # private temp dir (certs, configs, state roots, logs)
BENCH_PIDS=()         # long-running processes we started (agent, node_exporter)
CHEAP_PARENT=""       # cgroup parent (relative) of the cheap containers
CHEAP_PIDS=()         # their sleep processes
CHEAP_NAMES=()        # their cgroup leaf names
RUNC_ROOT=""          # private `runc --root` state dir
RUNC_IDS=()           # runc containers started there
RUNC_PARENT=""        # their cgroup parent (relative)

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
  printf 'bench: ERROR: %s\n' "$*" >&2
  exit 1
}

# need CMD PACKAGE: fail loudly naming the Debian package when CMD is missing.
need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found — install it: apt-get install -y $2"
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it creates cgroups and processes)"
}

need_lookout() {
  [ -x "$LOOKOUT_BIN" ] ||
    die "agent binary $LOOKOUT_BIN missing — build it: (cd $REPO && cargo build --release), or set LOOKOUT_BIN"
}

# The hybrid (or legacy v1) layout this benchmark writes cgroups for.
need_v1_hybrid() {
  local c
  for c in "${V1_CTRLS[@]}"; do
    [ -f "$CG/$c/cgroup.procs" ] ||
      die "cgroup v1 controller '$c' not mounted at $CG/$c (this benchmark needs the v1 hybrid layout)"
  done
  [ -f "$CG/unified/cgroup.procs" ] ||
    die "cgroup2 not mounted at $CG/unified (this benchmark needs the hybrid layout)"
}

need_static_busybox() {
  local bb=${BUSYBOX:-/bin/busybox}
  [ -x "$bb" ] || die "$bb missing — install it: apt-get install -y busybox-static"
  local out
  out=$(ldd "$bb" 2>&1 || true)
  [[ "$out" == *"not a dynamic executable"* ]] ||
    die "$bb is not static — install it: apt-get install -y busybox-static"
  BUSYBOX=$bb
}

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until SECONDS CMD...: polls CMD every 0.2 s; non-zero if it never succeeded.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

bench_tmp() {
  BENCH_TMP=$(mktemp -d /tmp/lookout-bench.XXXXXX)
  chmod 700 "$BENCH_TMP"
  cd "$BENCH_TMP"
  read -r LOAD_START _ </proc/loadavg
  # A private copy of the agent binary: a rebuild during the run cannot mix two builds.
  LOOKOUT_SRC=$LOOKOUT_BIN
  LOOKOUT_BUILT=$(date -u -r "$LOOKOUT_BIN" +%Y-%m-%dT%H:%M:%SZ)
  cp "$LOOKOUT_BIN" "$BENCH_TMP/lookout"
  LOOKOUT_BIN=$BENCH_TMP/lookout
}

# busy_note: a warning line when other work on the machine may distort latencies.
busy_note() {
  local l1
  read -r l1 _ </proc/loadavg
  awk -v l="$l1" -v c="$(nproc)" 'BEGIN { if (l > 0.25 * c)
    printf "note: load average %s on %d CPUs when the run ended: other work shared the machine; CPU per scrape is per process and robust to it, latency percentiles (p99 above all) are not\n", l, c }'
}

# --- processes ------------------------------------------------------------------------------

# cpu_ticks PID: utime + stime of the whole process (all threads, live and exited), in
# clock ticks (1/CLK_TCK s), from /proc/PID/stat fields 14 and 15.
cpu_ticks() {
  local s f
  read -r s 2>/dev/null <"/proc/$1/stat" || die "process $1 has exited (logs: agent.log / node_exporter.log in $BENCH_TMP; set KEEP_LOGS_ON_FAILURE=1 to keep them)"
  s=${s##*) }              # drop "pid (comm) ": the rest starts at field 3
  read -ra f <<<"$s"
  echo $((f[11] + f[12]))
}

# start_ticks PID: sets START_TICKS to the process start in clock ticks since boot (field
# 22 of /proc/PID/stat); no subshell, so it is cheap in loops.
start_ticks() {
  local s f
  read -r s <"/proc/$1/stat" || return 1
  s=${s##*) }
  read -ra f <<<"$s"
  START_TICKS=${f[19]}
}

# status_kb PID FIELD: a /proc/PID/status value (VmRSS, VmHWM, Threads…).
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

fd_count() {
  local f=("/proc/$1/fd/"*)
  echo "${#f[@]}"
}

# stop_pid PID: SIGTERM, up to 5 s, then SIGKILL; reaps it (our child).
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return 0
}

# --- TLS ------------------------------------------------------------------------------------

# gen_certs DIR: throw-away ECDSA P-256 CA, agent server cert (SAN IP:127.0.0.1,
# DNS:localhost) and client cert (clientAuth), all valid 2 days.
gen_certs() {
  local d=$1
  (
    set -e
    cd "$d"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca-key.pem -out ca.pem -days 2 \
      -subj "/CN=lookout bench CA" \
      -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -new "${ec[@]}" -keyout agent-key.pem -out agent.csr -subj "/CN=localhost"
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
      'extendedKeyUsage=serverAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost' >agent.ext
    openssl x509 -req -in agent.csr -CA ca.pem -CAkey ca-key.pem -set_serial 0x$(openssl rand -hex 8) \
      -days 2 -extfile agent.ext -out agent.pem
    openssl req -new "${ec[@]}" -keyout client-key.pem -out client.csr -subj "/CN=bench-proxy"
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
      'extendedKeyUsage=clientAuth' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -set_serial 0x$(openssl rand -hex 8) \
      -days 2 -extfile client.ext -out client.pem
  ) >"$d/openssl.log" 2>&1 || die "certificate generation failed: $(cat "$d/openssl.log")"
}

# --- the agent ------------------------------------------------------------------------------

AGENT_PORT=${AGENT_PORT:-19164}
NE_PORT=${NE_PORT:-19100}
AGENT_URL="https://127.0.0.1:$AGENT_PORT"
NE_URL="http://127.0.0.1:$NE_PORT"

# HTTP version spoken to the agent: 1.1 (as Prometheus and node_exporter) or 2.
HTTP=${HTTP:-1.1}
case "$HTTP" in 1.1 | 2) ;; *) die "HTTP must be 1.1 or 2, not '$HTTP'" ;; esac

# Arguments that make curl a valid client of the agent: the proxy's certificate, and the
# tenant a proxy would say it authorized (the agent serves an instance only to its owner;
# every bench container is the tenant `bench`'s).
agent_curl_args() {
  echo "--http$HTTP --cacert $BENCH_TMP/ca.pem --cert $BENCH_TMP/client.pem --key $BENCH_TMP/client-key.pem -Hx-lookout-tenant:bench"
}

# agent_get PATH: one request to the agent, body on stdout.
agent_get() {
  # shellcheck disable=SC2046
  curl -sS --fail --max-time 10 $(agent_curl_args) "$AGENT_URL$1"
}

# start_agent STATE_ROOT CACHE_TTL: writes the config, checks it, starts the agent.
start_agent() {
  local cfg=$BENCH_TMP/agent.toml
  cat >"$cfg" <<EOF
node_id = "bench"
listen = "127.0.0.1:$AGENT_PORT"
[tls]
cert = "$BENCH_TMP/agent.pem"
key = "$BENCH_TMP/agent-key.pem"
client_ca = "$BENCH_TMP/ca.pem"
[discovery]
runc_roots = ["$1"]
crun_roots = []
default_cgroup_rules = false
rescan_interval = "30s"
[collection]
cache_ttl = "$2"
max_concurrent = 1
load_interval = "5s"
EOF
  "$LOOKOUT_BIN" agent --config "$cfg" --check-config >"$BENCH_TMP/check-config.log" 2>&1 ||
    die "agent --check-config failed: $(cat "$BENCH_TMP/check-config.log")"
  LOOKOUT_LOG=${LOOKOUT_LOG:-info} "$LOOKOUT_BIN" agent --config "$cfg" \
    </dev/null >>"$BENCH_TMP/agent.log" 2>&1 &
  AGENT_PID=$!
  BENCH_PIDS+=("$AGENT_PID")
  wait_until 30 agent_get /healthz ||
    die "agent did not answer /healthz within 30 s; log: $(tail -20 "$BENCH_TMP/agent.log")"
}

# stop_agent: stops the agent started last and forgets it.
stop_agent() {
  local keep=() pid
  stop_pid "$AGENT_PID"
  for pid in "${BENCH_PIDS[@]}"; do [ "$pid" = "$AGENT_PID" ] || keep+=("$pid"); done
  BENCH_PIDS=("${keep[@]}")
  AGENT_PID=""
}

# instances_listed N: the agent lists exactly N instances.
instances_listed() { [ "$(agent_get /v1/instances | jq length)" = "$1" ]; }

start_node_exporter() {
  prometheus-node-exporter --web.listen-address="127.0.0.1:$NE_PORT" \
    </dev/null >"$BENCH_TMP/node_exporter.log" 2>&1 &
  NE_PID=$!
  BENCH_PIDS+=("$NE_PID")
  wait_until 30 curl -sS --fail --max-time 10 -o /dev/null "$NE_URL/metrics" ||
    die "node_exporter did not answer within 30 s; log: $(tail -20 "$BENCH_TMP/node_exporter.log")"
}

# --- request batches ------------------------------------------------------------------------

# curl_config FILE URL...: one curl config listing every URL (body discarded). One curl
# invocation over this file reuses one keep-alive connection for all of them.
curl_config() {
  local file=$1 u
  shift
  for u in "$@"; do
    printf 'url = "%s"\noutput = "/dev/null"\n' "$u"
  done >"$file"
}

# curl_config_repeat FILE URL COUNT: the same URL COUNT times.
curl_config_repeat() {
  local i
  for ((i = 0; i < $3; i++)); do
    printf 'url = "%s"\noutput = "/dev/null"\n' "$2"
  done >"$1"
}

# curl_batch CONFIG OUT LIMIT_SECONDS [CURL ARGS...]: runs the batch, bounded by
# LIMIT_SECONDS overall and 10 s per request; one line per finished request in OUT:
# "http_code time_total size_download num_connects".
curl_batch() {
  local cfg=$1 out=$2 limit=$3
  shift 3
  timeout --kill-after=5 "$limit" curl -sS --max-time 10 "$@" -K "$cfg" \
    -w '%{http_code} %{time_total} %{size_download} %{num_connects}\n' >"$out" 2>>"$BENCH_TMP/curl.err" || true
}

# percentiles FILE COLUMN: "p50 p90 p99" (nearest rank) of a column of seconds, in ms.
percentiles() {
  awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '
    { v[NR] = $1 }
    END {
      if (NR == 0) { print "- - -"; exit }
      n = split("50 90 99", p, " ")
      for (i = 1; i <= n; i++) {
        k = int((p[i] * NR + 99) / 100); if (k < 1) k = 1
        printf "%s%.2f", (i > 1 ? " " : ""), v[k] * 1000
      }
      print ""
    }'
}

# --- cheap containers: real cgroups + a sleep process + a runc-style state.json -------------

# cheap_init PARENT: the parent cgroup in every controller (cpuset gets the root's cpus/mems).
cheap_init() {
  CHEAP_PARENT=$1
  local c
  for c in "${V1_CTRLS[@]}" unified; do
    mkdir "$CG/$c/$CHEAP_PARENT"
  done
  cat "$CG/cpuset/cpuset.cpus" >"$CG/cpuset/$CHEAP_PARENT/cpuset.cpus"
  cat "$CG/cpuset/cpuset.mems" >"$CG/cpuset/$CHEAP_PARENT/cpuset.mems"
  CPUSET_CPUS=$(<"$CG/cpuset/$CHEAP_PARENT/cpuset.cpus")
  CPUSET_MEMS=$(<"$CG/cpuset/$CHEAP_PARENT/cpuset.mems")
  CHEAP_CREATED=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
}

# cheap_start NAME STATE_ROOT MEM_LIMIT_BYTES CPU_QUOTA_US: a cgroup in every v1 controller
# and in the v2 tree, a `sleep 3600` moved into all of them, and <STATE_ROOT>/<NAME>/state.json
# describing it as runc would. Uses builtins only (plus mkdir and the sleep itself) so a
# thousand of them take seconds.
cheap_start() {
  local name=$1 state=$2 mem=$3 quota=$4 c pid start rel=$CHEAP_PARENT/$1
  local dirs=()
  for c in "${V1_CTRLS[@]}" unified; do dirs+=("$CG/$c/$rel"); done
  CHEAP_NAMES+=("$name")
  mkdir "${dirs[@]}"
  echo "$CPUSET_CPUS" >"$CG/cpuset/$rel/cpuset.cpus"
  echo "$CPUSET_MEMS" >"$CG/cpuset/$rel/cpuset.mems"
  echo "$mem" >"$CG/memory/$rel/memory.limit_in_bytes"
  echo 100000 >"$CG/cpu/$rel/cpu.cfs_period_us"
  echo "$quota" >"$CG/cpu/$rel/cpu.cfs_quota_us"
  "$SLEEP_BIN" 3600 </dev/null >/dev/null 2>&1 &
  pid=$!
  CHEAP_PIDS+=("$pid")
  for c in "${dirs[@]}"; do echo "$pid" >"$c/cgroup.procs"; done
  start_ticks "$pid"
  start=$START_TICKS
  mkdir "$state/$name"
  printf '%s' "{\"id\":\"$name\",\"init_process_pid\":$pid,\"init_process_start\":$start," \
    "\"created\":\"$CHEAP_CREATED\",\"cgroup_paths\":{" \
    "\"\":\"$CG/unified/$rel\",\"cpu\":\"$CG/cpu/$rel\",\"cpuacct\":\"$CG/cpuacct/$rel\"," \
    "\"cpuset\":\"$CG/cpuset/$rel\",\"memory\":\"$CG/memory/$rel\",\"blkio\":\"$CG/blkio/$rel\"," \
    "\"pids\":\"$CG/pids/$rel\"},\"config\":{\"rootfs\":\"/\"," \
    "\"labels\":[\"lookout.tenant=bench\",\"bundle=/nonexistent/$name\"],\"hostname\":\"$name\"}}" \
    >"$state/$name/state.json.tmp"
  mv "$state/$name/state.json.tmp" "$state/$name/state.json"
}

cheap_cleanup() {
  [ -n "$CHEAP_PARENT" ] || return 0
  local c p n f i
  [ ${#CHEAP_PIDS[@]} -eq 0 ] || kill -KILL "${CHEAP_PIDS[@]}" 2>/dev/null
  # Anything else left in our cgroups was put there by us: end it too.
  for f in "$CG"/*/"$CHEAP_PARENT"/*/cgroup.procs; do
    [ -f "$f" ] || continue
    while read -r p; do kill -KILL "$p" 2>/dev/null; done <"$f"
  done
  [ ${#CHEAP_PIDS[@]} -eq 0 ] || wait "${CHEAP_PIDS[@]}" 2>/dev/null
  for c in "${V1_CTRLS[@]}" unified; do
    [ -d "$CG/$c/$CHEAP_PARENT" ] || continue
    for i in $(seq 50); do
      for n in "$CG/$c/$CHEAP_PARENT"/*/; do
        [ -d "$n" ] && rmdir "$n" 2>/dev/null
      done
      rmdir "$CG/$c/$CHEAP_PARENT" 2>/dev/null && break
      sleep 0.1
    done
    [ -d "$CG/$c/$CHEAP_PARENT" ] && log "WARNING: could not remove cgroup $CG/$c/$CHEAP_PARENT"
  done
  CHEAP_PARENT=""
  return 0
}

# --- real runc containers -------------------------------------------------------------------

# runc_start ID MEM_LIMIT_BYTES CPU_QUOTA_US: a busybox `sleep 3600` container with
# a private state root ($BENCH_TMP/runc) and cgroup parent /lookout-bench-<pid>.
runc_start() {
  local id=$1 mem=$2 quota=$3 bundle=$BENCH_TMP/bundles/$1
  RUNC_ROOT=$BENCH_TMP/runc
  RUNC_PARENT=lookout-bench-$$
  mkdir -p "$RUNC_ROOT" "$bundle/rootfs"/{bin,proc,sys,dev,tmp,etc}
  cp "$BUSYBOX" "$bundle/rootfs/bin/busybox"
  ln -s busybox "$bundle/rootfs/bin/sleep"
  ln -s busybox "$bundle/rootfs/bin/sh"
  runc spec --bundle "$bundle" || die "runc spec failed"
  jq --arg cg "/$RUNC_PARENT/$id" --arg id "$id" --argjson mem "$mem" --argjson q "$quota" '
    .process.terminal = false | .process.args = ["sleep", "3600"] | .root.readonly = false
    | .hostname = $id | .annotations = {"lookout.tenant": "bench"}
    | .linux.cgroupsPath = $cg
    | .linux.resources.memory.limit = $mem
    | .linux.resources.cpu.quota = $q | .linux.resources.cpu.period = 100000' \
    "$bundle/config.json" >"$bundle/config.json.new" && mv "$bundle/config.json.new" "$bundle/config.json"
  RUNC_IDS+=("$id")
  timeout 60 runc --root "$RUNC_ROOT" run -d --bundle "$bundle" "$id" \
    </dev/null >"$BENCH_TMP/runc-$id.log" 2>&1 ||
    die "runc run $id failed: $(cat "$BENCH_TMP/runc-$id.log")"
}

runc_cleanup() {
  [ -n "$RUNC_ROOT" ] || return 0
  local id c i
  for id in "${RUNC_IDS[@]}"; do
    timeout 30 runc --root "$RUNC_ROOT" delete -f "$id" >/dev/null 2>&1 ||
      log "WARNING: runc delete -f $id failed"
  done
  for c in "$CG"/*/; do
    [ -d "$c$RUNC_PARENT" ] || continue
    for i in $(seq 50); do
      rmdir "$c$RUNC_PARENT"/* "$c$RUNC_PARENT" 2>/dev/null
      [ -d "$c$RUNC_PARENT" ] || break
      sleep 0.1
    done
    [ -d "$c$RUNC_PARENT" ] && log "WARNING: could not remove cgroup $c$RUNC_PARENT"
  done
  RUNC_ROOT=""
  return 0
}

# --- lookout's own PKI and process helpers (proxy benchmark) --------------------------------

# lookout_pki DIR: a throw-away PKI made with `lookout certs` (ECDSA P-256, valid 2 days) under
# the file names gen_certs uses, so start_agent and agent_curl_args work unchanged:
#   ca.pem                       the one CA (operator CA and tenant CA at once)
#   agent.pem, agent-key.pem     agent listener (CN localhost, SAN IP:127.0.0.1)
#   client.pem, client-key.pem   the proxies' client identity towards the agent (kind proxy)
#   server.pem, server-key.pem   the listener of every proxy under test (SANs lookout.bench,
#                                *.lookout.bench, localhost, 127.0.0.1)
#   tenant.pem, tenant-key.pem   the tenant `bench`'s client certificate (CN = tenant)
lookout_pki() {
  local d=$1 p=$1/pki
  (
    set -e
    "$LOOKOUT_BIN" certs ca --out "$p" --name "lookout bench CA" --days 2
    "$LOOKOUT_BIN" certs issue --ca "$p" --kind agent --name localhost --san 127.0.0.1 --out "$p" --days 2
    "$LOOKOUT_BIN" certs issue --ca "$p" --kind proxy --name bench-proxy --out "$p" --days 2
    "$LOOKOUT_BIN" certs issue --ca "$p" --kind server --name lookout.bench --san lookout.bench \
      --san '*.lookout.bench' --san localhost --san 127.0.0.1 --out "$p" --days 2
    "$LOOKOUT_BIN" certs issue --ca "$p" --kind tenant --name bench --out "$p" --days 2
    cp "$p/ca.pem" "$d/ca.pem"
    cp "$p/agent-localhost.pem" "$d/agent.pem"
    cp "$p/agent-localhost-key.pem" "$d/agent-key.pem"
    cp "$p/proxy-bench-proxy.pem" "$d/client.pem"
    cp "$p/proxy-bench-proxy-key.pem" "$d/client-key.pem"
    cp "$p/server-lookout.bench.pem" "$d/server.pem"
    cp "$p/server-lookout.bench-key.pem" "$d/server-key.pem"
    cp "$p/tenant-bench.pem" "$d/tenant.pem"
    cp "$p/tenant-bench-key.pem" "$d/tenant-key.pem"
  ) >"$d/certs.log" 2>&1 || die "lookout certs failed: $(cat "$d/certs.log")"
}

# proxy_toml_head PORT ADMIN_PORT: the part of a proxy configuration every proxy benchmark
# shares (listeners on 127.0.0.1, base name lookout.bench, $BENCH_TMP/tenants.toml and the
# lookout_pki files); the caller appends its [inventory] and [limits].
proxy_toml_head() {
  cat <<EOF
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
base_name = "lookout.bench"
ip_literals_are_base = true
dns_suffix = "lookout.bench"
tenants_file = "$BENCH_TMP/tenants.toml"
[tls]
cert = "$BENCH_TMP/server.pem"
key = "$BENCH_TMP/server-key.pem"
tenant_ca = "$BENCH_TMP/ca.pem"
[upstream]
cert = "$BENCH_TMP/client.pem"
key = "$BENCH_TMP/client-key.pem"
ca = "$BENCH_TMP/ca.pem"
EOF
}

# bg_start NAME CMD...: runs CMD in the background (stdin /dev/null, stdout and stderr to
# $BENCH_TMP/NAME.log), records it in BENCH_PIDS for the EXIT trap, and sets BG_PID.
bg_start() {
  local name=$1
  shift
  "$@" </dev/null >>"$BENCH_TMP/$name.log" 2>&1 &
  BG_PID=$!
  BENCH_PIDS+=("$BG_PID")
}

# tree_ticks PID...: cpu_ticks summed over each PID and its direct children (nginx's master
# and workers; a worker respawned mid-batch would lose its predecessor's ticks).
tree_ticks() {
  local total=0 p c
  for p in "$@"; do
    total=$((total + $(cpu_ticks "$p")))
    for c in $(pgrep -P "$p" 2>/dev/null); do
      total=$((total + $(cpu_ticks "$c" 2>/dev/null || echo 0)))
    done
  done
  echo "$total"
}

# tcp_active_opens: the host's TCP active opens (connect() calls that sent a SYN) so far,
# from /proc/net/snmp. Every connection in this benchmark is on loopback, so a delta over a
# batch counts the clients' connections plus any a proxy opened to its upstream.
tcp_active_opens() {
  awk '$1 == "Tcp:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "ActiveOpens") c = i; h = 1 }
                      else { print $c; exit } }' /proc/net/snmp
}

# --- cleanup --------------------------------------------------------------------------------

bench_cleanup() {
  local rc=$? pid
  set +e
  trap - EXIT INT TERM
  for pid in "${BENCH_PIDS[@]}"; do stop_pid "$pid"; done
  runc_cleanup
  cheap_cleanup
  if [ -n "$BENCH_TMP" ] && [ -d "$BENCH_TMP" ]; then
    if [ "$rc" -ne 0 ] && [ -n "${KEEP_LOGS_ON_FAILURE:-}" ]; then
      log "logs kept in $BENCH_TMP (KEEP_LOGS_ON_FAILURE set); remove it by hand"
    else
      rm -rf "$BENCH_TMP"
    fi
  fi
  exit "$rc"
}

bench_traps() {
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
