#!/usr/bin/env bash
# Makes a throw-away test CA and a server certificate for 127.0.0.1 / localhost / ::1
# with the openssl CLI, into DIR (created): ca.pem, ca.key, server.pem, server.key.
# The keys are P-256 (fast to make); valid for 2 days.
#   bench/nginx/gen-certs.sh DIR
set -euo pipefail
dir="${1:?usage: gen-certs.sh DIR}"
mkdir -p "$dir"
cd "$dir"
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.pem -days 2 -subj "/CN=wsbeat test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server.key -out server.csr -subj "/CN=localhost"
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" > server.ext
ossl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
  -days 2 -extfile server.ext
rm -f server.csr server.ext ca.srl
