#!/bin/sh
# Renders the config of one raft-node pod of a StatefulSet, then runs the node.
#
#   entrypoint.sh [run]     render /run/raft-node/node.toml and exec `raft-node run`
#   entrypoint.sh render    render it to stdout (the API certificate goes to a temporary directory)
#
# The pod's node id is its ordinal + 1 (raft-node-0 is node 1). The first RAFT_INITIAL_REPLICAS
# pods are the members of the cluster created at the first start, reached through the
# headless service: the config holds addresses, not names, so this waits until their names
# resolve and writes the addresses it found. A pod whose ordinal is past them (the set was
# scaled up later) joins the running cluster as a voter through their client addresses.
#
# A pod that already holds data does not need every member up: a name that still does not
# resolve after RESOLVE_GRACE_S (a pod that cannot be scheduled has no address) is written
# with the address it had last time (kept in STATE_DIR/last-addresses). A pod that comes back
# with another address reports it to the cluster itself (raft-node does, when no leader
# reaches it).
#
# Environment (the StatefulSet sets it): POD_NAME, POD_IP, POD_NAMESPACE, RAFT_REPLICAS,
# RAFT_SERVICE (the headless service), RAFT_CLUSTER; optional: RAFT_INITIAL_REPLICAS
# (RAFT_REPLICAS), RAFT_PORT (7000), CLIENT_PORT (8080), STATE_DIR (/var/lib/raft-node: the
# volume), DATA_DIR (STATE_DIR/data), TLS_DIR (/etc/raft-node/tls), AUTH_DIR
# (/etc/raft-node/auth: admin.token, the node's own token, and tokens.toml, the
# [[auth.tokens]] entries, the hash of admin.token's among them), API_CA_DIR
# (/etc/raft-node/api-ca: api-ca.pem and api-ca-key.pem, from `cargo xtask certs --api-ca`),
# RAFT_CLIENT_SERVICE (raft-node), EXTRA_CONFIG (/etc/raft-node/extra/extra.toml: more
# tables), CLUSTER_DOMAIN (cluster.local), RESOLVE_TIMEOUT_S (600), RESOLVE_GRACE_S (30),
# RAFT_NODE (raft-node), RAFT_INSECURE_PLAIN_API (unset).
#
# The client API serves HTTPS: at each start the pod issues its API certificate (for its
# address of the moment, its name under the headless service, the client service's names and
# localhost) from the API CA, into the directory of CONFIG. The members dial each other's
# APIs by address, so the certificate must name an address known only at start. Without the API CA the pod refuses
# to start, unless RAFT_INSECURE_PLAIN_API=true (tokens then travel in clear, and the node
# says so).
set -eu

mode="${1:-run}"
: "${POD_NAME:?POD_NAME is not set (downward API: metadata.name)}"
: "${POD_IP:?POD_IP is not set (downward API: status.podIP)}"
: "${POD_NAMESPACE:?POD_NAMESPACE is not set (downward API: metadata.namespace)}"
: "${RAFT_REPLICAS:?RAFT_REPLICAS is not set}"
: "${RAFT_SERVICE:?RAFT_SERVICE is not set}"
: "${RAFT_CLUSTER:?RAFT_CLUSTER is not set}"
RAFT_INITIAL_REPLICAS="${RAFT_INITIAL_REPLICAS:-$RAFT_REPLICAS}"
RAFT_PORT="${RAFT_PORT:-7000}"
CLIENT_PORT="${CLIENT_PORT:-8080}"
STATE_DIR="${STATE_DIR:-/var/lib/raft-node}"
DATA_DIR="${DATA_DIR:-$STATE_DIR/data}"
TLS_DIR="${TLS_DIR:-/etc/raft-node/tls}"
AUTH_DIR="${AUTH_DIR:-/etc/raft-node/auth}"
API_CA_DIR="${API_CA_DIR:-/etc/raft-node/api-ca}"
RAFT_CLIENT_SERVICE="${RAFT_CLIENT_SERVICE:-raft-node}"
RAFT_INSECURE_PLAIN_API="${RAFT_INSECURE_PLAIN_API:-}"
EXTRA_CONFIG="${EXTRA_CONFIG:-/etc/raft-node/extra/extra.toml}"
CLUSTER_DOMAIN="${CLUSTER_DOMAIN:-cluster.local}"
RESOLVE_TIMEOUT_S="${RESOLVE_TIMEOUT_S:-600}"
RESOLVE_GRACE_S="${RESOLVE_GRACE_S:-30}"
RAFT_NODE="${RAFT_NODE:-raft-node}"
CONFIG="${CONFIG:-/run/raft-node/node.toml}"

say() { echo "entrypoint: $*" >&2; }

ordinal="${POD_NAME##*-}"
case "$ordinal" in
  '' | *[!0-9]*) say "POD_NAME $POD_NAME does not end with -<ordinal>"; exit 2 ;;
esac
id=$((ordinal + 1))
set_name="${POD_NAME%-*}"

# The IPv4 or IPv6 address of a name, or nothing.
resolve() {
  getent hosts "$1" | awk 'NR == 1 { print $1 }'
}

# host:port, with brackets around an IPv6 host.
joined() {
  case "$1" in
    *:*) echo "[$1]:$2" ;;
    *) echo "$1:$2" ;;
  esac
}

case "$RAFT_INITIAL_REPLICAS" in
  '' | *[!0-9]*) say "RAFT_INITIAL_REPLICAS must be a number"; exit 2 ;;
esac
case "$RAFT_REPLICAS" in
  '' | *[!0-9]*) say "RAFT_REPLICAS must be a number"; exit 2 ;;
esac
if [ "$RAFT_INITIAL_REPLICAS" -lt 1 ] || [ "$RAFT_INITIAL_REPLICAS" -gt "$RAFT_REPLICAS" ]; then
  say "RAFT_INITIAL_REPLICAS ($RAFT_INITIAL_REPLICAS) must be between 1 and RAFT_REPLICAS ($RAFT_REPLICAS)"
  exit 2
fi

cache="$STATE_DIR/last-addresses"
has_data=""
if [ -d "$DATA_DIR" ] && [ -n "$(ls -A "$DATA_DIR" 2>/dev/null)" ]; then
  has_data=yes
fi

# The address of an initial member, waiting for its name to resolve.
members=""
joins=""
found=""
waited=0
i=0
while [ "$i" -lt "$RAFT_INITIAL_REPLICAS" ]; do
  member=$((i + 1))
  name="$set_name-$i.$RAFT_SERVICE.$POD_NAMESPACE.svc.$CLUSTER_DOMAIN"
  if [ "$member" -eq "$id" ]; then
    ip="$POD_IP"
  else
    ip="$(resolve "$name" || true)"
    if [ -z "$ip" ] && [ -n "$has_data" ] && [ "$waited" -ge "$RESOLVE_GRACE_S" ] && [ -f "$cache" ]; then
      ip="$(awk -v n="$name" '$1 == n { print $2; exit }' "$cache")"
      if [ -n "$ip" ]; then
        say "$name does not resolve; this node holds data, so it uses the address $name had last time ($ip)"
      fi
    fi
    if [ -z "$ip" ]; then
      if [ "$waited" -ge "$RESOLVE_TIMEOUT_S" ]; then
        say "$name did not resolve within ${RESOLVE_TIMEOUT_S} s"
        exit 1
      fi
      if [ $((waited % 10)) -eq 0 ]; then
        say "waiting for $name to resolve (the headless service publishes pods that are not ready)"
      fi
      sleep 1
      waited=$((waited + 1))
      continue
    fi
  fi
  found="$found$name $ip
"
  members="$members
[[members]]
id = $member
raft_addr = \"$(joined "$ip" "$RAFT_PORT")\"
client_addr = \"$(joined "$ip" "$CLIENT_PORT")\"
"
  joins="$joins${joins:+, }\"$(joined "$ip" "$CLIENT_PORT")\""
  i=$((i + 1))
done
if [ -d "$STATE_DIR" ] && [ -w "$STATE_DIR" ]; then
  printf '%s' "$found" >"$cache.tmp" && mv "$cache.tmp" "$cache"
fi

# The initial members are listed; a pod added later joins through them.
if [ "$id" -le "$RAFT_INITIAL_REPLICAS" ]; then
  membership="$members"
else
  membership="join = [$joins]
join_as_voter = true
"
fi

# The API certificate, issued for the names this pod is reached by: by `run` into the
# config's directory; by `render` (which must not touch a running node's files) into a
# temporary directory, named in what it prints.
if [ "$mode" = run ]; then
  cert_dir="$(dirname "$CONFIG")"
else
  cert_dir="$(mktemp -d)"
fi
api_tls=""
have_key=""; have_cert=""
[ -f "$API_CA_DIR/api-ca-key.pem" ] && have_key=yes
[ -f "$API_CA_DIR/api-ca.pem" ] && have_cert=yes
if [ -n "$have_key" ] && [ -n "$have_cert" ]; then
  mkdir -p "$cert_dir"
  domain="$POD_NAMESPACE.svc.$CLUSTER_DOMAIN"
  if ! "$RAFT_NODE" issue-api-cert --cluster "$RAFT_CLUSTER" \
    --ca-key "$API_CA_DIR/api-ca-key.pem" --ca-cert "$API_CA_DIR/api-ca.pem" --peer-ca "$TLS_DIR/ca.pem" \
    --name "$POD_IP" --name "$POD_NAME.$RAFT_SERVICE.$domain" --name "$POD_NAME.$RAFT_SERVICE" \
    --name "$RAFT_CLIENT_SERVICE.$domain" --name "$RAFT_CLIENT_SERVICE.$POD_NAMESPACE.svc" \
    --name "$RAFT_CLIENT_SERVICE.$POD_NAMESPACE" --name "$RAFT_CLIENT_SERVICE" \
    --name localhost --name 127.0.0.1 --name ::1 \
    --cert "$cert_dir/api.pem" --key "$cert_dir/api-key.pem"; then
    say "cannot issue the API certificate from $API_CA_DIR"
    exit 1
  fi
  api_tls="[api_tls]
cert = \"$cert_dir/api.pem\"
key = \"$cert_dir/api-key.pem\"
ca_cert = \"$API_CA_DIR/api-ca.pem\"
"
elif [ -n "$have_key$have_cert" ]; then
  say "$API_CA_DIR holds only one of api-ca.pem and api-ca-key.pem: refusing to start"
  exit 2
elif [ "$RAFT_INSECURE_PLAIN_API" = "true" ]; then
  say "no API CA in $API_CA_DIR: the client API serves plain HTTP (RAFT_INSECURE_PLAIN_API=true)"
else
  say "no API CA in $API_CA_DIR (api-ca.pem, api-ca-key.pem: cargo xtask certs --api-ca): refusing to serve the client API in clear; set RAFT_INSECURE_PLAIN_API=true to do so anyway"
  exit 2
fi

render() {
  cat <<TOML
# Rendered by deploy/entrypoint.sh for pod $POD_NAME; see raft-node/node.example.toml.
cluster = "$RAFT_CLUSTER"
id = $id
raft_addr = "$(joined "$POD_IP" "$RAFT_PORT")"
client_addr = "$(joined "$POD_IP" "$CLIENT_PORT")"
data_dir = "$DATA_DIR"
$membership
[tls]
ca_cert = "$TLS_DIR/ca.pem"
cert = "$TLS_DIR/node-$id.pem"
key = "$TLS_DIR/node-$id-key.pem"

$api_tls
[auth]
token_file = "$AUTH_DIR/admin.token"

TOML
  if [ -f "$AUTH_DIR/tokens.toml" ]; then
    cat "$AUTH_DIR/tokens.toml"
    echo
  fi
  if [ -f "$EXTRA_CONFIG" ]; then
    cat "$EXTRA_CONFIG"
  fi
}

case "$mode" in
  render) render ;;
  run)
    mkdir -p "$(dirname "$CONFIG")"
    render >"$CONFIG"
    say "node $id of $RAFT_REPLICAS, config $CONFIG"
    exec "$RAFT_NODE" run --config "$CONFIG"
    ;;
  *) say "usage: entrypoint.sh [run|render]"; exit 2 ;;
esac
