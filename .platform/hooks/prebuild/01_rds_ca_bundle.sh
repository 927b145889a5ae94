#!/bin/bash
# Install the CAs the app trusts for its database where DB_SSL_CA points:
#   DB_SSL_TRUST=rds        the RDS CA "global bundle" (RDS and Aurora endpoints; the default)
#   DB_SSL_TRUST=rds-proxy  that bundle plus Amazon Root CA 1-4 from the system trust store
#                           (RDS Proxy endpoints present ACM certificates, which chain to those)
#
# The RDS bundle is fetched at deploy time over HTTPS (the system trust store vouches for AWS's
# server) rather than committed: AWS adds CAs to it ahead of rotations, and an old copy would
# break verify-identity on the next one. Every downloaded certificate must be an Amazon RDS CA.
# If the download fails, an installed bundle is kept; with none, the deploy fails only when the
# app needs one (DB_SSL_MODE verify-ca / verify-identity, which DB_AUTH=iam requires).
#
# The hook writes only its own file, marked by its first line: it never replaces a system trust
# store (a symlink to one included) nor a file it did not install.
set -euo pipefail

GET_CONFIG="${EB_GET_CONFIG:-/opt/elasticbeanstalk/bin/get-config}"
URL="${RDS_CA_BUNDLE_URL:-https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem}"
HEADER="# Installed by .platform/hooks/prebuild/01_rds_ca_bundle.sh"

property() {  # an environment property read as the app reads it (app/config.py), or $2 when unset
  local value
  value=$("$GET_CONFIG" environment -k "$1" 2>/dev/null) || value=""
  value=$(printf '%s' "$value" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')  # pasted spaces, newlines
  printf '%s' "${value:-$2}"  # empty (or only spaces) is unset
}
choice() {  # a property naming one of a few words: any case, MySQL's VERIFY_IDENTITY spelling too
  property "$1" "$2" | tr '[:upper:]_' '[:lower:]-'
}

target=$(property DB_SSL_CA /etc/pki/tls/certs/rds-global-bundle.pem)
# Unset, DB_SSL_MODE defaults as in the app (app/config.py): verify-identity for DB_AUTH=iam.
if [ "$(choice DB_AUTH password)" = iam ]; then default_mode=verify-identity; else default_mode=required; fi
mode=$(choice DB_SSL_MODE "$default_mode")
trust=$(choice DB_SSL_TRUST rds)
log() { echo "rds-ca-bundle: $*" >&2; }
verifying() { [ "$mode" = "verify-ca" ] || [ "$mode" = "verify-identity" ]; }

case "$trust" in
  rds | rds-proxy) ;;
  *) log "ERROR: DB_SSL_TRUST=$trust is not one of: rds, rds-proxy (rds-proxy adds Amazon Root CA 1-4"
     log "for RDS Proxy endpoints); fix it with eb setenv DB_SSL_TRUST=rds"
     exit 1 ;;
esac

# The machine's trust store: Amazon Linux 2023, then Debian/Ubuntu; SYSTEM_CA_BUNDLE for tests.
system_bundle=${SYSTEM_CA_BUNDLE:-}
if [ -z "$system_bundle" ]; then
  for candidate in /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/certs/ca-certificates.crt; do
    if [ -e "$candidate" ]; then system_bundle=$candidate; break; fi
  done
fi

tmp=$(mktemp -d)
staged=""
trap 'rm -rf "$tmp"; [ -z "$staged" ] || rm -f "$staged"' EXIT

# 1. Never replace a system trust store with RDS CAs, however DB_SSL_CA reaches it.
real_target=$(realpath -m -- "$target")
for store in /etc/pki/tls/certs/ca-bundle.crt /etc/pki/tls/cert.pem /etc/ssl/certs/ca-certificates.crt \
             /etc/ssl/cert.pem ${system_bundle:+"$system_bundle"}; do
  if [ "$real_target" = "$store" ] || [ "$real_target" = "$(realpath -m -- "$store")" ]; then
    log "ERROR: DB_SSL_CA=$target is the system trust store $store; installing RDS CAs there would"
    log "replace every CA the instance trusts. Set DB_SSL_CA to a file of its own, e.g."
    log "eb setenv DB_SSL_CA=/etc/pki/tls/certs/rds-global-bundle.pem"
    exit 1
  fi
done
case "$real_target" in
  /etc/pki/ca-trust/* | /etc/ssl/certs/*)
    log "ERROR: DB_SSL_CA=$target is inside a system trust store directory ($real_target); the"
    log "hook does not write there. Set DB_SSL_CA to a file of its own, e.g."
    log "eb setenv DB_SSL_CA=/etc/pki/tls/certs/rds-global-bundle.pem"
    exit 1 ;;
esac

split() {  # $1: a PEM file, $2: prefix; one file per certificate block
  csplit -s -z -f "$2" "$1" '/-----BEGIN CERTIFICATE-----/' '{*}'
}

verify() {  # $1: a PEM file; prints the number of certificates, fails if any is not an RDS CA
  local file=$1 count=0 subject
  rm -f "$tmp"/cert-*
  split "$file" "$tmp/cert-"
  for cert in "$tmp"/cert-*; do
    subject=$(openssl x509 -in "$cert" -noout -subject 2>/dev/null) \
      || { log "not a certificate: block $count of $file"; return 1; }
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

# 2. An existing file is replaced only if this hook installed it: our header, or (an install by
# the earlier version of the hook, which wrote no header) nothing but Amazon RDS CA certificates.
if [ -e "$target" ]; then
  if [ ! -f "$target" ]; then
    log "ERROR: DB_SSL_CA=$target exists and is not a regular file; point DB_SSL_CA at a file path"
    exit 1
  fi
  case "$(head -n 1 -- "$target")" in
    "$HEADER"*) ;;
    *)
      if ! verify "$target" >/dev/null 2>&1; then
        log "ERROR: DB_SSL_CA=$target: the file there ($real_target) was not installed by this hook"
        log "(no '$HEADER' line, and not only Amazon RDS CA certificates); it is left as it is."
        log "Point DB_SSL_CA at a path of its own, e.g."
        log "eb setenv DB_SSL_CA=/etc/pki/tls/certs/rds-global-bundle.pem, or remove that file if nothing uses it."
        exit 1
      fi ;;
  esac
fi

# 3. For RDS Proxy: Amazon Root CA 1-4 (subject exactly CN, O=Amazon, C=US; a CA) from the system store.
amazon_roots() {  # appends the roots to $1, prints how many
  local out=$1 found=0 fields
  [ -n "$system_bundle" ] && [ -r "$system_bundle" ] || { echo 0; return; }
  split "$system_bundle" "$tmp/sys-"
  for cert in "$tmp"/sys-*; do
    fields=$(openssl x509 -in "$cert" -noout -subject -nameopt sep_multiline,sname,utf8 2>/dev/null \
             | sed -n 's/^ *//; 2,$p' | LC_ALL=C sort) || continue
    case "$fields" in
      $'C=US\nCN=Amazon Root CA '[1-4]$'\nO=Amazon') ;;
      *) continue ;;
    esac
    openssl x509 -in "$cert" -noout -ext basicConstraints 2>/dev/null | grep -q "CA:TRUE" || continue
    { printf '# %s, from %s\n' "$(printf '%s' "$fields" | sed -n 's/^CN=//p')" "$system_bundle"
      openssl x509 -in "$cert"; } >>"$out"
    found=$((found + 1))
  done
  rm -f "$tmp"/sys-*
  echo "$found"
}

if curl -fsS --retry 3 --max-time 30 -o "$tmp/bundle.pem" "$URL" && n=$(verify "$tmp/bundle.pem"); then
  roots=0
  : >"$tmp/roots.pem"
  if [ "$trust" = "rds-proxy" ]; then
    roots=$(amazon_roots "$tmp/roots.pem")
    if [ "$roots" -eq 0 ]; then
      if verifying; then
        log "ERROR: DB_SSL_TRUST=rds-proxy needs Amazon Root CA 1-4, and the system trust store"
        log "(${system_bundle:-none found}) has none of them: DB_SSL_MODE=$mode could not verify"
        log "an RDS Proxy endpoint."
        log "Install or update the ca-certificates package on the instances, or set DB_SSL_TRUST=rds"
        log "if the database endpoint is not an RDS Proxy."
        exit 1
      fi
      log "WARNING: no Amazon Root CA 1-4 in ${system_bundle:-the system trust store}"
      log "(DB_SSL_MODE=$mode does not need them); installing the RDS CAs only"
    fi
  fi
  mkdir -p "$(dirname "$target")"
  staged=$(mktemp "$(dirname "$target")/.rds-ca-bundle.XXXXXX")
  { echo "$HEADER (DB_SSL_TRUST=$trust from $URL); replaced on every deployment, do not edit"
    sed -e '$a\' "$tmp/bundle.pem"
    cat "$tmp/roots.pem"; } >"$staged"
  chmod 0644 "$staged"
  mv -f "$staged" "$target"
  staged=""
  if [ "$trust" = "rds-proxy" ]; then
    log "installed $n RDS CA certificates and $roots Amazon root CA certificates at $target"
  else
    log "installed $n RDS CA certificates at $target"
  fi
elif [ -s "$target" ]; then
  log "WARNING: could not fetch or verify $URL; keeping the installed $target"
  case "$(head -n 1 -- "$target")" in
    "$HEADER (DB_SSL_TRUST=$trust "*) ;;
    *) log "WARNING: it was not installed for DB_SSL_TRUST=$trust; deploy again once $URL is reachable" ;;
  esac
elif verifying; then
  log "ERROR: no RDS CA bundle at $target and $URL could not be fetched or verified;"
  log "DB_SSL_MODE=$mode needs it. Check the instances' outbound HTTPS access."
  exit 1
else
  log "WARNING: no RDS CA bundle installed (DB_SSL_MODE=$mode does not need one)"
fi
