#!/bin/sh
# Makes the files compose.yaml mounts: a development federation (CA, keys,
# certificates, federation.toml, node files) in ./federation, rewritten for
# containers: each node listens on 0.0.0.0:7401, serves metrics on
# 0.0.0.0:9464, keeps its data in /var/lib/cluebridge/<node>, and reaches
# its peers by compose service name. Run from deploy/ with a cluebridge
# binary on PATH (or CLUEBRIDGE=/path/to/cluebridge). For trials only: every
# container sees every key; a real federation gives each node its own.
# The files are private (0600, directories 0700): run it as root, or chown
# the result to 10001:10001 as it says, so that the containers can read them.
set -eu
bin=${CLUEBRIDGE:-cluebridge}
dir=${1:-federation}
if [ -e "$dir/federation.toml" ]; then
    echo "$dir already holds a federation; remove it first" >&2
    exit 1
fi
# `up` creates the federation on first use; stop it once the files exist.
"$bin" up --dir "$dir" --base-port 7401 >/dev/null 2>&1 &
pid=$!
i=0
until [ -e "$dir/judicial.toml" ] && [ -e "$dir/clients/judicial/auditor.pem" ]; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then
        kill -TERM "$pid" 2>/dev/null || true
        echo "cluebridge up did not create $dir in time" >&2
        exit 1
    fi
    sleep 0.1
done
kill -TERM "$pid"
wait "$pid" || true
rm -rf "$dir/data"
port=7401
for node in discipline personnel public_security judicial; do
    sed -i \
        -e "s|^listen = .*|listen = \"0.0.0.0:7401\"|" \
        -e "s|^metrics_listen = .*|metrics_listen = \"0.0.0.0:9464\"|" \
        -e "s|^data_dir = .*|data_dir = \"/var/lib/cluebridge/$node\"|" \
        "$dir/$node.toml"
    sed -i -e "s|https://127.0.0.1:$port\"|https://$node:7401\"|" "$dir/federation.toml"
    port=$((port + 1))
done
# `up` made every file 0600 and every directory 0700 (a node refuses keys
# others can read); the containers run as uid/gid 10001 and must own them.
if [ "$(id -u)" = 0 ]; then
    chown -R 10001:10001 "$dir"
    echo "federation for compose written to $dir (owned by 10001:10001)"
else
    echo "federation for compose written to $dir"
    echo "now give it to the containers' user: sudo chown -R 10001:10001 $dir"
fi
