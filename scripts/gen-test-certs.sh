#!/usr/bin/env bash
# Makes a test CA and certificates for local use (tests, trying the agents out). Not for
# production: use your organisation's CA there.
#
#   scripts/gen-test-certs.sh DIR NAME[:SAN,SAN...] ...
#
# Writes DIR/ca.pem and DIR/ca-key.pem (made once, reused if present), and for each NAME
# DIR/NAME.pem and DIR/NAME-key.pem: an EC P-256 certificate whose subject CN is NAME, valid for
# TLS servers and clients, with subject alternative names DNS:NAME, DNS:localhost, IP:127.0.0.1,
# IP:::1 and any extra SANs given after a colon (e.g. agent-b:DNS:dom0-b.example.org,IP:10.0.0.2).
# Examples:
#   scripts/gen-test-certs.sh /tmp/vmm-tls agent-a agent-b orchestrator
#   VMMIGRATE_CA_NAME="other CA" scripts/gen-test-certs.sh /tmp/rogue intruder   # a CA nobody trusts
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
command -v openssl >/dev/null || { echo "gen-test-certs: openssl is needed (Debian: apt install openssl)" >&2; exit 1; }

dir=$1
shift
days=${VMMIGRATE_CERT_DAYS:-825}
mkdir -p "$dir"
chmod 700 "$dir"
umask 077

if [ ! -f "$dir/ca.pem" ] || [ ! -f "$dir/ca-key.pem" ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca-key.pem"
  openssl req -x509 -new -key "$dir/ca-key.pem" -sha256 -days "$days" -subj "/CN=${VMMIGRATE_CA_NAME:-vmmigrate test CA}" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$dir/ca.pem"
fi

for spec in "$@"; do
  name=${spec%%:*}
  extra=""
  [ "$name" != "$spec" ] && extra=",${spec#*:}"
  case "$name" in
    "" | */* | .*) echo "gen-test-certs: bad name '$name'" >&2; exit 2 ;;
  esac
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name-key.pem"
  openssl req -new -key "$dir/$name-key.pem" -subj "/CN=$name" -out "$dir/$name.csr"
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1,IP:::1$extra" >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial -sha256 -days "$days" \
    -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
  echo "$dir/$name.pem $dir/$name-key.pem"
done
chmod 644 "$dir"/*.pem
chmod 600 "$dir"/*-key.pem
