#!/usr/bin/env bash
# Runs nginx in the foreground as a TLS-terminating proxy in front of BACKEND (host:port
# of a ws:// server), listening on 127.0.0.1:PORT, with its files in DIR (which must
# hold server.pem/server.key, e.g. from gen-certs.sh). exec's nginx, so the caller's
# child process is nginx itself and killing it stops the proxy.
#   bench/nginx/run.sh DIR PORT BACKEND
set -euo pipefail
dir="$(cd "${1:?usage: run.sh DIR PORT BACKEND}" && pwd)"
port="${2:?port}"
backend="${3:?backend host:port}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$port|g" -e "s|@BACKEND@|$backend|g" \
  "$here/nginx.conf.template" > "$dir/nginx.conf"
exec "$nginx_bin" -e "$dir/error.log" -p "$dir" -c "$dir/nginx.conf"
