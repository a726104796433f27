#!/usr/bin/env bash
# The whole test suite, as README.md documents it: installs what the tests need on a fresh
# Debian machine (root required: the tests start real runc containers, cgroups and network
# namespaces), then runs formatting, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "deploy/test.sh: must run as root (tests create containers, cgroups and network namespaces)" >&2
  exit 1
fi

# Debian packages the tests use: runc + busybox-static (real containers), iproute2 (netns,
# veth), prometheus (promtool checks the exposition), prometheus-node-exporter (the peer in
# benchmarks and format comparisons), openssl (certificate fixtures in scripts),
# python3-fusepy + fuse3 (a FUSE filesystem whose statfs hangs, the "dead NFS mount" test),
# dnsmasq-base (a real DNS server on loopback for the hickory-resolver paths), curl (the
# tests' client of Prometheus's HTTP API and of the proxy), protobuf-compiler (protoc, which
# etcd-client's build needs) with libprotobuf-dev (the well-known types protoc imports, only
# a Recommends of protobuf-compiler, so --no-install-recommends leaves them out), etcd-server
# (a real etcd on loopback for the etcd source), python3-yaml (tests/k8s_manifests.py reads the Kubernetes manifests in deploy/k8s).
need_pkgs=()
for pair in runc:runc busybox-static:/bin/busybox iproute2:ip prometheus:promtool \
            prometheus-node-exporter:prometheus-node-exporter openssl:openssl \
            fuse3:fusermount3 python3-fusepy:/usr/lib/python3/dist-packages/fusepy.py \
            dnsmasq-base:dnsmasq curl:curl protobuf-compiler:protoc \
            libprotobuf-dev:/usr/include/google/protobuf/descriptor.proto etcd-server:etcd \
            python3-yaml:/usr/lib/python3/dist-packages/yaml/__init__.py; do
  pkg=${pair%%:*} probe=${pair#*:}
  if ! command -v "$probe" >/dev/null 2>&1 && [ ! -e "$probe" ]; then need_pkgs+=("$pkg"); fi
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing: ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-fail-fast "$@"
