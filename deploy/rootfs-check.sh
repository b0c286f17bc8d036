#!/bin/sh
# Builds the container image's runtime filesystem without a container engine and checks that
# raft-node starts in it and answers /health: Debian bookworm (minbase, as debootstrap builds
# it; the image uses bookworm-slim) plus the release binary and the entrypoint, run in a
# chroot as the image's non-root user.
#
#   sudo deploy/rootfs-check.sh [ROOTFS]     (default target/rootfs; needs debootstrap, root)
set -eu
cd "$(dirname "$0")/.."
rootfs="${1:-target/rootfs}"
target="${CARGO_TARGET_DIR:-target}"
binary="$target/release/raft-node"
port=18080

[ "$(id -u)" -eq 0 ] || { echo "run as root (chroot)"; exit 2; }
command -v debootstrap >/dev/null || { echo "install debootstrap: apt-get install -y debootstrap"; exit 2; }
[ -x "$binary" ] || cargo build --release -p raft-node
if [ ! -x "$rootfs/bin/sh" ]; then
  echo "rootfs-check: debootstrap bookworm (minbase) into $rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian
fi

# The image's runtime stage: the binary, the entrypoint, a non-root user, its directories.
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/raft-node"
install -D -m 0755 deploy/entrypoint.sh "$rootfs/usr/local/bin/raft-node-entrypoint"
chroot "$rootfs" sh -c 'getent passwd raft >/dev/null || { groupadd --system --gid 10001 raft && useradd --system --uid 10001 --gid raft --home-dir /var/lib/raft-node --shell /usr/sbin/nologin raft; }'
rm -rf "$rootfs/var/lib/raft-node" "$rootfs/etc/raft-node"
install -d -o 10001 -g 10001 -m 0750 "$rootfs/var/lib/raft-node" "$rootfs/run/raft-node"
install -d -m 0755 "$rootfs/etc/raft-node/tls"
cargo xtask certs --nodes 1 --cluster rootfs --out "$rootfs/etc/raft-node/tls" >/dev/null
token="rootfs-check-admin-token-$(date +%s)-0001"
printf '%s\n' "$token" >"$rootfs/etc/raft-node/admin.token"
# The entry for the admin token: its SHA-256, as `raft-node new-token` prints it.
admin_hash="$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)"
chown -R 10001:10001 "$rootfs/etc/raft-node"
cat >"$rootfs/etc/raft-node/node.toml" <<TOML
cluster = "rootfs"
id = 1
raft_addr = "127.0.0.1:17000"
client_addr = "127.0.0.1:$port"
data_dir = "/var/lib/raft-node"

[[members]]
id = 1
raft_addr = "127.0.0.1:17000"
client_addr = "127.0.0.1:$port"

[tls]
ca_cert = "/etc/raft-node/tls/ca.pem"
cert = "/etc/raft-node/tls/node-1.pem"
key = "/etc/raft-node/tls/node-1-key.pem"

[auth]
token_file = "/etc/raft-node/admin.token"

[[auth.tokens]]
name = "admin"
role = "admin"
sha256 = "$admin_hash"
TOML

echo "rootfs-check: $(du -sh "$rootfs" | cut -f1) root filesystem; starting raft-node in it as uid 10001"
chroot --userspec=10001:10001 "$rootfs" /usr/local/bin/raft-node check-config --config /etc/raft-node/node.toml
chroot --userspec=10001:10001 "$rootfs" /usr/local/bin/raft-node run --config /etc/raft-node/node.toml \
  >"$rootfs/../rootfs-node.log" 2>&1 &
pid=$!
ok=""
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then ok=yes; break; fi
  sleep 0.2
done
status=""
for _ in $(seq 1 100); do
  status="$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/status" || true)"
  case "$status" in *'"role":"leader"'*) break ;; esac
  sleep 0.2
done
kill -TERM "$pid"
wait "$pid" || true
if [ -z "$ok" ]; then
  echo "rootfs-check: FAIL: /health did not answer; the node's log:"
  cat "$rootfs/../rootfs-node.log"
  exit 1
fi
case "$status" in
  *'"role":"leader"'*) ;;
  *) echo "rootfs-check: FAIL: /v1/status: $status"; exit 1 ;;
esac
echo "rootfs-check: PASS: /health answered, the node leads its one-node cluster, SIGTERM stopped it"
