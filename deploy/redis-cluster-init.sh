#!/bin/sh
# Creates the Redis Cluster of docker-compose.yml's `cluster` profile, once: the
# redis-cluster-init service runs it on every `up`, so it must be safe to run again.
#   REDIS_CLUSTER_NODES     the nodes, "host:port host:port ...", all on the same password
#   REDISCLI_AUTH           that password (redis-cli reads it from here, not the command line)
#   REDIS_CLUSTER_REPLICAS  replicas per master when the cluster is created (default 0): list
#                           masters x (1 + replicas) nodes; redis-cli picks which are masters
# A first node that knows no other is fresh: the nodes are joined and the slots spread over them
# (`redis-cli --cluster create`). Otherwise the cluster exists, and its slots and data stay
# where they are. The nodes are only met again at their current addresses: a recreated
# container may come back on another IP, and the cluster bus knows nodes by IP (the hostnames
# they announce are for clients), so a meeting is how each node learns the new address.
# Exits 0 once every node reports cluster_state:ok and sees all the others: gateway and workers
# start after that.
set -eu

nodes=${REDIS_CLUSTER_NODES:?set REDIS_CLUSTER_NODES}

cli() { # host:port, then redis-cli's arguments
  at=$1
  shift
  redis-cli -h "${at%:*}" -p "${at##*:}" "$@"
}

field() { # host:port, field of CLUSTER INFO
  cli "$1" cluster info | tr -d '\r' | sed -n "s/^$2://p"
}

addr() { # host:port -> ip:port: CLUSTER MEET, and so --cluster create, takes addresses, not names
  case ${1%:*} in
    *[!0-9.]*) ip=$(getent hosts "${1%:*}" | awk 'NR == 1 { print $1 }') ;;
    *) ip=${1%:*} ;;
  esac
  if [ -z "$ip" ]; then
    echo "redis-cluster-init: cannot resolve ${1%:*}" >&2
    exit 1
  fi
  echo "$ip:${1##*:}"
}

for node in $nodes; do
  until cli "$node" ping >/dev/null 2>&1; do sleep 1; done
done

meet() { # every node meets every other at its current address
  for node in $nodes; do
    for other in $nodes; do
      if [ "$other" != "$node" ]; then
        to=$(addr "$other")
        cli "$node" cluster meet "${to%:*}" "${to##*:}" >/dev/null
      fi
    done
  done
}

converged() { # on every node: cluster_state ok, and every other node connected and not failing
  for node in $nodes; do
    [ "$(field "$node" cluster_state)" = ok ] || return 1
    cli "$node" cluster nodes | awk '$3 ~ /fail/ || $8 != "connected" { bad = 1 } END { exit bad }' || return 1
  done
}

first=${nodes%% *}
existed=false
if [ "$(field "$first" cluster_known_nodes)" -gt 1 ]; then
  existed=true
  echo "redis-cluster-init: the cluster exists; meeting its nodes at their current addresses"
else
  set --
  for node in $nodes; do set -- "$@" "$(addr "$node")"; done
  redis-cli --cluster create "$@" --cluster-replicas "${REDIS_CLUSTER_REPLICAS:-0}" --cluster-yes
fi

# Until every node sees all others: right after a restart a node still reports the state it
# had (cluster_state:ok) while it cannot reach anyone yet. Meetings are repeated because
# gossip from a node that has not caught up yet can hand another the old address back.
tries=0
until converged; do
  tries=$((tries + 1))
  if [ "$tries" -gt 60 ]; then
    echo "redis-cluster-init: the cluster has not converged after 60 s" >&2
    cli "$first" cluster nodes >&2
    exit 1
  fi
  if [ "$existed" = true ]; then meet; fi
  sleep 1
done
echo "redis-cluster-init: cluster_state:ok on all $(field "$first" cluster_known_nodes) nodes"
