#!/usr/bin/env python3
"""Checks deploy/k8s without a cluster (run by tests/deploy_examples.rs).

usage: k8s_manifests.py REPO LOOKOUT_BINARY PEM_DIR WORK_DIR

1. Structure: what the manifests promise — every host path read-only (recursively where the
   runtime can), the agent's capabilities exactly the systemd unit's, its resource limits the
   unit's bounds, hostPID, the downward API for node id and address; proxies replicated,
   spread, probed on /readyz and /healthz over HTTPS with the served Host, the admin port on
   no tenant-facing Service and fenced by the NetworkPolicy.
2. Configurations: each pod's filesystem is assembled in WORK_DIR from its volumes (ConfigMaps
   from the kustomization's generators, Secrets from PEM_DIR by key, host paths as they are
   here), the agent's init container script runs under busybox with downward-API values, and
   `lookout agent|proxy --check-config` must accept the result. Every absolute path in a
   configuration must lie on one of its container's mounts.

Every failure is listed; the exit status is 1 if there is any.
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib

import yaml

REPO, LOOKOUT, PEMS, WORK = sys.argv[1:5]
K8S = os.path.join(REPO, "deploy", "k8s")
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
    return ok


def load_yaml(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


kust = load_yaml(os.path.join(K8S, "kustomization.yaml"))[0]
objects = []
for res in kust.get("resources", []):
    objects += load_yaml(os.path.join(K8S, res))
by_kind = {}
for o in objects:
    check(o.get("apiVersion") and o.get("metadata", {}).get("name"), f"incomplete object {o}")
    by_kind.setdefault(o["kind"], []).append(o)

check(kust.get("namespace"), "kustomization sets no namespace")
check(any(i.get("name") == "lookout" for i in kust.get("images", [])), "no image override for lookout")
cm_gen = {g["name"]: g for g in kust.get("configMapGenerator", [])}
secret_gen = {g["name"]: g for g in kust.get("secretGenerator", [])}


def gen_files(gen):
    """key → source path (relative to deploy/k8s) of a generator's files."""
    out = {}
    for f in gen.get("files", []):
        key, _, src = f.partition("=") if "=" in f else (os.path.basename(f), "", f)
        out[key] = src
    return out


for name, gen in cm_gen.items():
    for key, src in gen_files(gen).items():
        check(os.path.isfile(os.path.join(K8S, src)), f"ConfigMap {name}: {src} missing")
check(
    cm_gen.get("lookout-tenants", {}).get("options", {}).get("disableNameSuffixHash"),
    "the tenants ConfigMap must keep its name, so that edits reach running proxies",
)


def one(kind, name):
    found = [o for o in by_kind.get(kind, []) if o["metadata"]["name"] == name]
    if not check(len(found) == 1, f"want one {kind} {name}, found {len(found)}"):
        sys.exit(report())
    return found[0]


def report():
    for f in failures:
        print("FAIL:", f)
    print(f"{len(failures)} failure(s)" if failures else "deploy/k8s: all checks passed")
    return 1 if failures else 0


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def containers(pod):
    return pod.get("initContainers", []) + pod["containers"]


def port_number(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    failures.append(f"{container['name']}: no port named {port}")
    return None


def unit(name):
    """The [Service] settings of a systemd unit in deploy/systemd."""
    out = {}
    with open(os.path.join(REPO, "deploy", "systemd", name)) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                k, v = line.strip().split("=", 1)
                out[k] = v
    return out


def cpu_millis(q):
    q = str(q)
    return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)


def bytes_of(q):
    q = str(q)
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    for u, m in units.items():
        if q.endswith(u):
            return int(q[: -len(u)]) * m
    return int(q)


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def config_of(gen_name, key):
    src = gen_files(cm_gen[gen_name])[key]
    with open(os.path.join(K8S, src), "rb") as f:
        return tomllib.load(f)


# ---------------------------------------------------------------- the agent DaemonSet
agent_ds = one("DaemonSet", "lookout-agent")
apod = agent_ds["spec"]["template"]["spec"]
alabels = agent_ds["spec"]["template"]["metadata"]["labels"]
check(matches(agent_ds["spec"]["selector"]["matchLabels"], alabels), "DaemonSet selector ≠ pod labels")
check(apod.get("hostPID") is True, "agent: no hostPID (cgroup.procs lists the reader's PID namespace only)")
check(apod.get("hostIPC") is not True, "agent: hostIPC")
check(apod.get("hostNetwork") is True, "agent: hostNetwork (advertise = host IP; node net/dev)")
check(apod.get("automountServiceAccountToken") is False, "agent: service account token mounted")
agent = next(c for c in apod["containers"] if c["name"] == "agent")
volumes = {v["name"]: v for v in apod["volumes"]}
host_paths = {}
for v in apod["volumes"]:
    if "hostPath" in v:
        host_paths[v["name"]] = v["hostPath"]["path"]
for c in containers(apod):
    for m in c.get("volumeMounts", []):
        if m["name"] in host_paths:
            check(m.get("readOnly") is True, f"{c['name']}: hostPath {m['mountPath']} not readOnly")
            check(
                m.get("recursiveReadOnly") in ("IfPossible", "Enabled"),
                f"{c['name']}: hostPath {m['mountPath']} submounts left writable",
            )
mounted = {m["name"] for c in containers(apod) for m in c.get("volumeMounts", [])}
for name, path in host_paths.items():
    check(name in mounted, f"hostPath volume {name} never mounted")
    # Containers' root filesystems are mounted below these: a host path above one of them
    # would hand the agent every container's files.
    for rootfs in ("/run/containerd/io.containerd.runtime.v2.task", "/var/lib/containerd",
                   "/var/lib/docker", "/var/lib/kubelet", "/run/containers/storage/overlay"):
        check(not (rootfs + "/").startswith(path.rstrip("/") + "/"), f"hostPath {path} is too wide")
for need in ["/proc", "/sys", "/sys/fs/cgroup", "/run/runc", "/run/containerd/runc",
             "/run/docker/runtime-runc", "/run/crun"]:
    check(need in host_paths.values(), f"agent: host {need} not mounted")

systemd = unit("lookout-agent.service")
unit_caps = {c.removeprefix("CAP_") for c in systemd["CapabilityBoundingSet"].split()}
check(unit_caps == {c.removeprefix("CAP_") for c in systemd["AmbientCapabilities"].split()},
      "systemd unit: ambient ≠ bounding capabilities")
check(cpu_millis(agent["resources"]["limits"]["cpu"]) == int(systemd["CPUQuota"].rstrip("%")) * 10,
      "agent: CPU limit ≠ the unit's CPUQuota")
check(bytes_of(agent["resources"]["limits"]["memory"]) == bytes_of(systemd["MemoryMax"]),
      "agent: memory limit ≠ the unit's MemoryMax")

downward = {}
for c in apod.get("initContainers", []):
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if ref:
            downward[e["name"]] = ref
check(downward.get("NODE_NAME") == "spec.nodeName", "node id not from spec.nodeName")
check(downward.get("HOST_IP") == "status.hostIP", "advertise not from status.hostIP")
agent_cfg = config_of(volumes["template"]["configMap"]["name"], "agent.toml")
check(port_number(agent, "agent") == port_of(agent_cfg["listen"]), "agent port ≠ listen")
check("cert" in agent_cfg.get("etcd", {}).get("tls", {}), "agent: no etcd client certificate")

# ---------------------------------------------------------------- the proxies
dep = one("Deployment", "lookout-proxy")
ppod = dep["spec"]["template"]["spec"]
plabels = dep["spec"]["template"]["metadata"]["labels"]
proxy = next(c for c in ppod["containers"] if c["name"] == "proxy")
pvolumes = {v["name"]: v for v in ppod["volumes"]}
proxy_cfg = config_of(pvolumes["config"]["configMap"]["name"], "proxy.toml")
https, admin = port_of(proxy_cfg["listen"]), port_of(proxy_cfg["admin_listen"])
check((https, admin) == (9163, 9165), f"proxy ports {https}, {admin}")
check(not proxy_cfg["admin_listen"].startswith("127."), "admin_listen on loopback: unscrapable")
check(proxy_cfg["inventory"]["source"] == "etcd", "proxy inventory is not etcd")
check("cert" in proxy_cfg["inventory"].get("tls", {}), "proxy: no etcd client certificate")
check(dep["spec"]["replicas"] >= 2, "fewer than 2 proxy replicas")
check(matches(dep["spec"]["selector"]["matchLabels"], plabels), "Deployment selector ≠ pod labels")
check(ppod.get("automountServiceAccountToken") is False, "proxy: service account token mounted")
check(ppod.get("securityContext", {}).get("runAsNonRoot") is True, "proxy: may run as root")
for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    get = proxy.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path, f"{probe}: path {get.get('path')}")
    check(get.get("scheme") == "HTTPS", f"{probe}: not HTTPS")
    check(port_number(proxy, get.get("port")) == https, f"{probe}: not the HTTPS port")
    hosts = [h["value"] for h in get.get("httpHeaders", []) if h["name"].lower() == "host"]
    check(hosts == [proxy_cfg["base_name"]], f"{probe}: Host {hosts} is not base_name")
check(port_number(proxy, "https") == https and port_number(proxy, "admin") == admin,
      "container ports ≠ configured listeners")
terms = (ppod.get("affinity", {}).get("podAntiAffinity", {})
         .get("preferredDuringSchedulingIgnoredDuringExecution", []))
check(any(matches(t["podAffinityTerm"]["labelSelector"]["matchLabels"], plabels)
          and t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname" for t in terms),
      "proxies not spread across nodes")

for c in containers(apod) + containers(ppod):
    sc = c.get("securityContext", {})
    caps = sc.get("capabilities", {})
    check(caps.get("drop") == ["ALL"], f"{c['name']}: capabilities not dropped")
    want = unit_caps if c is agent else set()
    check(set(caps.get("add", [])) == want, f"{c['name']}: capabilities {caps.get('add')} ≠ {want}")
    check(sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: root filesystem writable")
    check(sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: privilege escalation")
    check(sc.get("privileged") is not True, f"{c['name']}: privileged")

pdbs = [p for p in by_kind.get("PodDisruptionBudget", [])
        if matches(p["spec"]["selector"]["matchLabels"], plabels)]
if check(len(pdbs) == 1, "want one PodDisruptionBudget for the proxies"):
    s, n = pdbs[0]["spec"], dep["spec"]["replicas"]
    if "maxUnavailable" in s:
        check(0 < s["maxUnavailable"] < n, f"PDB maxUnavailable {s['maxUnavailable']} of {n}")
    else:
        check(0 < s.get("minAvailable", 0) < n, f"PDB minAvailable {s.get('minAvailable')} of {n}")

tenant_facing = 0
for svc in by_kind.get("Service", []):
    if not matches(svc["spec"].get("selector"), plabels):
        continue
    targets = {port_number(proxy, p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]}
    name = svc["metadata"]["name"]
    if admin in targets:
        check(targets == {admin}, f"Service {name} mixes the admin port with others")
        check(svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"Service {name} exposes admin")
    if https in targets:
        tenant_facing += 1
        check(targets == {https}, f"Service {name}: tenants' Service exposes {targets}")
        check(any(p["port"] == 9163 for p in svc["spec"]["ports"]), f"Service {name}: not on 9163")
check(tenant_facing == 1, f"{tenant_facing} tenant-facing Services")
policies = [p for p in by_kind.get("NetworkPolicy", []) if matches(p["spec"]["podSelector"]["matchLabels"], plabels)]
if check(len(policies) == 1, "no NetworkPolicy for the proxies"):
    for rule in policies[0]["spec"]["ingress"]:
        if any(p.get("port") == admin for p in rule.get("ports", [])):
            check(rule.get("from"), "the admin port is open to every source")
        check(rule.get("ports"), "an ingress rule without ports opens the admin port")


# ---------------------------------------------------------------- configurations
def assemble(pod, tag):
    """Builds the pod's volumes under WORK/tag; returns volume name → local directory."""
    local = {}
    for v in pod["volumes"]:
        d = os.path.join(WORK, tag, v["name"])
        if "hostPath" in v:
            local[v["name"]] = v["hostPath"]["path"]
            continue
        os.makedirs(d)
        if "configMap" in v:
            name = v["configMap"]["name"]
            check(name in cm_gen, f"{tag}: ConfigMap {name} is generated nowhere")
            for key, src in gen_files(cm_gen.get(name, {})).items():
                shutil.copy(os.path.join(K8S, src), os.path.join(d, key))
        elif "secret" in v:
            name = v["secret"]["secretName"]
            check(name in secret_gen, f"{tag}: Secret {name} is generated nowhere")
            for key in gen_files(secret_gen.get(name, {})):
                shutil.copy(os.path.join(PEMS, key), os.path.join(d, key))
        local[v["name"]] = d
    return local


def mapper(container, local):
    """Rewrites in-container absolute paths to where this test put them."""
    mounts = sorted(((m["mountPath"], local[m["name"]]) for m in container.get("volumeMounts", [])),
                    key=lambda m: -len(m[0]))

    def one_path(p):
        for mp, here in mounts:
            if p == mp or p.startswith(mp + "/"):
                return here + p[len(mp):]
        return None

    def text(t):
        return re.sub(r"(?<![\w.])/[\w.@/-]+", lambda m: one_path(m.group(0)) or m.group(0), t)

    return one_path, text


def paths_in(value, key=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_in(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from paths_in(v, key)
    elif isinstance(value, str) and value.startswith("/") and key != "prefix":
        yield value


def check_config(kind, container, local, config_path, tag):
    one_path, text = mapper(container, local)
    here = one_path(config_path)
    if not check(here and os.path.isfile(here), f"{tag}: {config_path} is on no mount"):
        return None
    with open(here) as f:
        raw = f.read()
    parsed = tomllib.loads(raw)
    for p in paths_in(parsed):
        check(one_path(p), f"{tag}: {p} in the configuration is on none of the container's mounts")
    rewritten = os.path.join(WORK, tag, f"{kind}.toml")
    with open(rewritten, "w") as f:
        f.write(text(raw))
    r = subprocess.run([LOOKOUT, kind, "--config", rewritten, "--check-config"],
                       capture_output=True, text=True)
    check(r.returncode == 0, f"{tag}: lookout {kind} --check-config: {r.stdout}{r.stderr}")
    return parsed


def config_arg(container):
    cmd = container["command"] + container.get("args", [])
    return cmd[cmd.index("--config") + 1]


busybox = shutil.which("busybox") or "/bin/busybox"
applets = os.path.join(WORK, "busybox-bin")
os.makedirs(applets)
for applet in ("sed", "tr", "printf", "cat"):
    os.symlink(busybox, os.path.join(applets, applet))
cases = [
    ("node-1", "10.0.0.17", "node-1", "10.0.0.17:9164"),
    ("ip-10-0-0-17.eu-west-1.compute.internal", "fd00::17",
     "ip-10-0-0-17-eu-west-1-compute-internal", "[fd00::17]:9164"),
]
for i, (node_name, host_ip, want_id, want_addr) in enumerate(cases):
    tag = f"agent-{i}"
    local = assemble(apod, tag)
    values = {"spec.nodeName": node_name, "status.hostIP": host_ip}
    for init in apod.get("initContainers", []):
        _, text = mapper(init, local)
        cmd = [text(a) for a in init["command"]]
        check(cmd[:2] == ["/bin/sh", "-c"], f"{init['name']}: not a shell script")
        env = {"PATH": applets}
        for e in init.get("env", []):
            field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            env[e["name"]] = values.get(field, e.get("value", ""))
        r = subprocess.run([busybox, "sh", "-c", cmd[2]], env=env, capture_output=True, text=True)
        check(r.returncode == 0, f"{tag}: init container {init['name']} failed: {r.stderr}")
    cfg = check_config("agent", agent, local, config_arg(agent), tag)
    if cfg:
        check(cfg.get("node_id") == want_id, f"{tag}: node_id {cfg.get('node_id')} ≠ {want_id}")
        check(cfg["etcd"].get("advertise") == want_addr,
              f"{tag}: advertise {cfg['etcd'].get('advertise')} ≠ {want_addr}")
check_config("proxy", proxy, assemble(ppod, "proxy"), config_arg(proxy), "proxy")

sys.exit(report())
