#!/bin/bash
# Install the RDS CA "global bundle" where DB_SSL_CA points, so TLS to RDS can be verified.
#
# Fetched at deploy time over HTTPS (the system trust store vouches for AWS's server) rather
# than committed: AWS adds CAs to the bundle ahead of rotations, and an old copy would break
# verify-identity on the next rotation. The download is checked before it replaces the
# installed file: every block must parse as an Amazon RDS CA certificate. If the download
# fails, an installed bundle is kept; with none, the deploy fails only when the app needs
# one (DB_SSL_MODE verify-ca / verify-identity, which DB_AUTH=iam requires).
set -euo pipefail

GET_CONFIG="${EB_GET_CONFIG:-/opt/elasticbeanstalk/bin/get-config}"
URL="${RDS_CA_BUNDLE_URL:-https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem}"

property() {  # an environment property, or $2 when it is not set
  "$GET_CONFIG" environment -k "$1" 2>/dev/null || printf '%s' "$2"
}

target=$(property DB_SSL_CA /etc/pki/tls/certs/rds-global-bundle.pem)
mode=$(property DB_SSL_MODE required)
log() { echo "rds-ca-bundle: $*" >&2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

verify() {  # $1: a PEM file; prints the number of certificates, fails if any is not an RDS CA
  local file=$1 count=0
  csplit -s -z -f "$tmp/cert-" "$file" '/-----BEGIN CERTIFICATE-----/' '{*}'
  for cert in "$tmp"/cert-*; do
    subject=$(openssl x509 -in "$cert" -noout -subject 2>/dev/null) || { log "not a certificate: block $count"; return 1; }
    case "$subject" in
      *"Amazon RDS"*) ;;
      *) log "unexpected certificate in bundle: $subject"; return 1 ;;
    esac
    openssl x509 -in "$cert" -noout -ext basicConstraints 2>/dev/null | grep -q "CA:TRUE" \
      || { log "not a CA certificate: $subject"; return 1; }
    count=$((count + 1))
  done
  rm -f "$tmp"/cert-*
  [ "$count" -gt 0 ] || { log "no certificates in $file"; return 1; }
  echo "$count"
}

if curl -fsS --retry 3 --max-time 30 -o "$tmp/bundle.pem" "$URL" && n=$(verify "$tmp/bundle.pem"); then
  mkdir -p "$(dirname "$target")"
  install -m 0644 "$tmp/bundle.pem" "$target.new"
  mv -f "$target.new" "$target"
  log "installed $n RDS CA certificates at $target"
elif [ -s "$target" ]; then
  log "WARNING: could not fetch or verify $URL; keeping the installed $target"
elif [ "$mode" = "verify-ca" ] || [ "$mode" = "verify-identity" ]; then
  log "ERROR: no RDS CA bundle at $target and $URL could not be fetched or verified;"
  log "DB_SSL_MODE=$mode needs it. Check the instances' outbound HTTPS access."
  exit 1
else
  log "WARNING: no RDS CA bundle installed (DB_SSL_MODE=$mode does not need one)"
fi
