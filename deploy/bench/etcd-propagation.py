#!/usr/bin/env python3
"""Propagation rounds for etcd-inventory.sh: how long one new instance written to etcd takes
to show in every proxy's GET /v1/discover, and its removal to vanish.

Per round: PUT one instance key through etcd's JSON gateway (POST /v3/kv/put on the client
URL, one kept-alive HTTP connection, so no process start sits inside the timing), then poll
every proxy until its published inventory holds one instance more; then DELETE it
(/v3/kv/deleterange) and poll until it holds one less. Times are from just before the write
is sent to the poll that saw the change, per proxy.

What is polled: each proxy's admin `GET /metrics`, gauge lookout_proxy_inventory_instances
(the size of the inventory the proxy serves, read from the same published snapshot that
/v1/discover answers from), over one kept-alive connection per proxy, round-robin, with
--pause-poll between cycles. Not /v1/discover itself: with 100,000 instances every discover
request scans the whole inventory (milliseconds of proxy CPU even for a 1-instance tenant),
so polling it back to back would compete with the very publish being timed. After each
change is seen everywhere, one /v1/discover per proxy (as the probe's tenant) confirms that
the id is listed, or no longer listed.

Bounded: ROUNDS rounds; each wait ends after --time-limit seconds (exit 1), each request
after 10 s. Traffic goes only to the URLs given, which the caller sets to 127.0.0.1.

Output, one line per round and operation (tab-separated):
    put|del  write_ms  poll_cycle_ms  ms_proxy1 ms_proxy2 ...  [VmRSS_kB_proxy1 ...]
(the VmRSS columns with --pids, read after the change was seen everywhere).
Standard library only (Debian's python3).
"""

import argparse
import base64
import http.client
import json
import ssl
import sys
import time
import urllib.parse


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Etcd:
    def __init__(self, url: str):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)

    def call(self, path: str, body: dict) -> dict:
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"etcd {path}: HTTP {resp.status}: {data[:200]!r}")
        return json.loads(data)

    def put(self, key: str, value: str) -> None:
        self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def delete(self, key: str) -> None:
        self.call("/v3/kv/deleterange", {"key": b64(key)})


class Proxy:
    def __init__(self, url: str, ctx: ssl.SSLContext, token: str):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port, u.path
        self.ctx, self.token = ctx, token
        self.conn = None

    def body(self) -> bytes:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(
                    self.host, self.port, context=self.ctx, timeout=10
                )
            try:
                self.conn.request("GET", self.path, headers={"Authorization": f"Bearer {self.token}"})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{self.host}:{self.port}: HTTP {resp.status}")
                return data
            except (http.client.HTTPException, OSError):
                # A connection the proxy closed (idle timeout): reconnect once.
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class Admin:
    """A proxy's admin listener (plain HTTP): the served inventory's size."""

    GAUGE = b"lookout_proxy_inventory_instances "

    def __init__(self, url: str):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.conn = None

    def instances(self) -> int:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                self.conn.request("GET", "/metrics")
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{self.host}:{self.port}/metrics: HTTP {resp.status}")
                for line in data.splitlines():
                    if line.startswith(self.GAUGE):
                        return int(float(line[len(self.GAUGE):]))
                raise RuntimeError(f"{self.host}:{self.port}/metrics: no lookout_proxy_inventory_instances")
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def wait_all(admins, want: int, t0: float, limit: float, pause: float):
    """Polls until every proxy serves `want` instances; returns (ms per proxy, mean cycle ms)."""
    seen = [None] * len(admins)
    cycles = 0
    start = time.monotonic()
    while None in seen:
        cycles += 1
        for i, a in enumerate(admins):
            if seen[i] is None and a.instances() == want:
                seen[i] = (time.monotonic() - t0) * 1000
        if None in seen:
            if time.monotonic() - start > limit:
                raise SystemExit(f"not every proxy reached {want} instances within {limit} s: {seen}")
            time.sleep(pause)
    return seen, (time.monotonic() - start) * 1000 / cycles


def vmrss_kb(pid: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return line.split()[1]
    return "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--etcd", required=True, help="etcd client URL (http://127.0.0.1:PORT)")
    ap.add_argument("--key", required=True, help="instance key prefix: <prefix>instances/<node>/")
    ap.add_argument("--node", required=True)
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--token", required=True, help="the tenant's bearer token")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--time-limit", type=float, default=60)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between rounds")
    ap.add_argument("--pause-poll", type=float, default=0.002, help="seconds between poll cycles")
    ap.add_argument("--tag", default="probe")
    ap.add_argument("--pids", default="", help="comma-separated proxy pids, for VmRSS per round")
    ap.add_argument("proxies", nargs="+", help="ADMIN_URL,DISCOVER_URL per proxy")
    a = ap.parse_args()

    ctx = ssl.create_default_context(cafile=a.ca)
    etcd = Etcd(a.etcd)
    admins, proxies = [], []
    for pair in a.proxies:
        admin, discover = pair.split(",", 1)
        admins.append(Admin(admin))
        proxies.append(Proxy(discover, ctx, a.token))
    pids = [p for p in a.pids.split(",") if p]
    counts = {adm.instances() for adm in admins}  # also connects before timing anything
    if len(counts) != 1:
        raise RuntimeError(f"the proxies serve different inventories: {counts}")
    base = counts.pop()
    for r in range(1, a.rounds + 1):
        iid = f"{a.tag}-{r:02d}-{int(time.time() * 1000) % 10**9:09d}"
        inst = {
            "id": iid,
            "runtime_id": iid,
            "node": a.node,
            "tenant": a.tenant,
            "alias": a.tag,
            "groups": ["prod"],
            "image": None,
            "source": "runc",
            "labels": {"lookout.tenant": a.tenant},
        }
        needle = f'"{iid}"'.encode()
        for op in ("put", "del"):
            t0 = time.monotonic()
            if op == "put":
                etcd.put(a.key + iid, json.dumps(inst, separators=(",", ":")))
            else:
                etcd.delete(a.key + iid)
            write_ms = (time.monotonic() - t0) * 1000
            want = base + 1 if op == "put" else base
            seen, cycle = wait_all(admins, want, t0, a.time_limit, a.pause_poll)
            for p in proxies:
                if (needle in p.body()) != (op == "put"):
                    raise RuntimeError(f"{p.host}:{p.port}: /v1/discover disagrees with its gauge on {iid}")
            cols = [op, f"{write_ms:.1f}", f"{cycle:.2f}", " ".join(f"{s:.1f}" for s in seen)]
            if pids:
                cols.append(" ".join(vmrss_kb(p) for p in pids))
            print(*cols, sep="\t", flush=True)
        time.sleep(a.pause)


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, OSError, http.client.HTTPException) as e:
        print(f"etcd-propagation: {e}", file=sys.stderr)
        sys.exit(1)
