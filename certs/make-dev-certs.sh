#!/usr/bin/env bash
# Creates a local development CA and certificates signed by it, in certs/dev/:
#
#   ca.crt, ca.key            the dev CA (trust ca.crt in your browser / curl --cacert)
#   shop.localhost.crt/.key   SAN: shop.localhost, localhost, 127.0.0.1, ::1
#   default.crt/.key          the default certificate (for clients sending no or an unknown SNI)
#
# Idempotent: existing files are kept as long as they are valid for at least
# another 30 days and were signed by the CA in the same directory; otherwise
# they are (re)made. Run with --force to regenerate everything.
#
#   certs/make-dev-certs.sh            # creates what is missing
#   certs/make-dev-certs.sh --force    # starts over with a new CA
#
# Needs openssl (Debian: apt-get install openssl). These certificates are for
# local development only; certs/dev/ is git-ignored, never commit its keys.
set -euo pipefail

cd "$(dirname "$0")"
OUT=dev
CA_DAYS=3650
LEAF_DAYS=825          # the maximum Apple platforms accept for TLS server certificates
MIN_VALID=$((30 * 24 * 3600))

force=0
case "${1:-}" in
  "") ;;
  -f|--force) force=1 ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

command -v openssl >/dev/null 2>&1 || { echo "openssl is missing (apt-get install openssl)" >&2; exit 1; }

umask 077
mkdir -p "$OUT"
chmod 700 "$OUT"
if [ "$force" -eq 1 ]; then
  rm -f "$OUT"/*.crt "$OUT"/*.key "$OUT"/*.srl "$OUT"/*.csr "$OUT"/*.ext
fi

# A certificate is kept when it and its key exist, it stays valid for 30 more
# days, and (for leaves) it verifies against the current CA.
still_good() {
  local crt=$1 key=$2 ca=${3:-}
  [ -s "$crt" ] && [ -s "$key" ] || return 1
  openssl x509 -in "$crt" -noout -checkend "$MIN_VALID" >/dev/null 2>&1 || return 1
  # The key must belong to the certificate.
  [ "$(openssl x509 -in "$crt" -noout -pubkey 2>/dev/null)" = "$(openssl pkey -in "$key" -pubout 2>/dev/null)" ] || return 1
  if [ -n "$ca" ]; then
    openssl verify -CAfile "$ca" "$crt" >/dev/null 2>&1 || return 1
  fi
}

new_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  chmod 600 "$1"
}

# ---- the CA
ca_changed=0
if still_good "$OUT/ca.crt" "$OUT/ca.key"; then
  echo "keep   $OUT/ca.crt"
else
  new_key "$OUT/ca.key"
  openssl req -x509 -new -key "$OUT/ca.key" -sha256 -days "$CA_DAYS" \
    -subj "/O=Gateway dev/CN=Gateway dev CA $(hostname -s 2>/dev/null || echo local)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$OUT/ca.crt"
  chmod 644 "$OUT/ca.crt"
  ca_changed=1
  echo "made   $OUT/ca.crt"
fi

# ---- leaf certificates: leaf NAME CN SAN...
leaf() {
  local name=$1 cn=$2
  shift 2
  local crt="$OUT/$name.crt" key="$OUT/$name.key"
  if [ "$ca_changed" -eq 0 ] && still_good "$crt" "$key" "$OUT/ca.crt"; then
    echo "keep   $crt"
    return
  fi
  local san="" s
  for s in "$@"; do san="${san:+$san,}$s"; done
  new_key "$key"
  cat > "$OUT/$name.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EXT
  openssl req -new -key "$key" -subj "/O=Gateway dev/CN=$cn" -out "$OUT/$name.csr"
  openssl x509 -req -in "$OUT/$name.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
    -days "$LEAF_DAYS" -sha256 -extfile "$OUT/$name.ext" -out "$crt" 2>/dev/null
  rm -f "$OUT/$name.csr" "$OUT/$name.ext"
  chmod 644 "$crt"
  echo "made   $crt ($*)"
}

leaf shop.localhost shop.localhost DNS:shop.localhost DNS:localhost IP:127.0.0.1 IP:::1
leaf default "Gateway dev default" DNS:gateway.invalid DNS:localhost IP:127.0.0.1

cat <<MSG

Dev certificates are in certs/$OUT/. Try them with e.g.:
  curl --cacert certs/$OUT/ca.crt --resolve shop.localhost:8443:127.0.0.1 https://shop.localhost:8443/
MSG
