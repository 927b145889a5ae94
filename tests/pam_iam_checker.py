"""Stand-in for RDS's IAM token check, run by pam_exec for the test server's IAM user.

pam_exec (with expose_authtok) runs this with the presented password on stdin and PAM_USER
in the environment; exit 0 accepts the login. It verifies the token the way RDS does,
with the standard library only (not botocore, which generated it):

- shape: "<host>:<port>/?<query>", for the expected host and port;
- Action=connect, DBUser equal to the user logging in, X-Amz-Algorithm=AWS4-HMAC-SHA256,
  X-Amz-SignedHeaders=host, X-Amz-Expires of at most 900 seconds;
- X-Amz-Credential names the expected access key, today's scope, the region and "rds-db";
- not expired: X-Amz-Date + X-Amz-Expires is still ahead of the clock (the clock can be
  moved forward through a file, to simulate time passing);
- the SigV4 signature, recomputed with the test's secret key.

Usage (from /etc/pam.d/<service>): python pam_iam_checker.py <config.json>
"""

import datetime
import hashlib
import hmac
import json
import os
import sys
from pathlib import Path
from urllib.parse import parse_qsl, quote


def reject(reason: str, log: Path) -> None:
    with log.open("a") as f:
        f.write(f"reject {os.environ.get('PAM_USER')}: {reason}\n")
    sys.exit(1)


def sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    log = Path(config["log"])
    token = sys.stdin.buffer.read().split(b"\0")[0].decode(errors="replace").strip()
    user = os.environ.get("PAM_USER", "")
    endpoint, sep, query = token.partition("/?")
    if not sep:
        reject("not a token", log)
    if endpoint != config["endpoint"]:
        reject(f"token for {endpoint!r}, expected {config['endpoint']!r}", log)
    params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    expected = {"Action": "connect", "DBUser": user, "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-SignedHeaders": "host"}
    for name, value in expected.items():
        if params.get(name) != value:
            reject(f"{name} is {params.get(name)!r}", log)
    try:
        akid, day, region, service, terminator = params["X-Amz-Credential"].split("/")
        signed_at = datetime.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc)
        expires = int(params["X-Amz-Expires"])
        signature = params["X-Amz-Signature"]
    except (KeyError, ValueError):
        reject("malformed credential, date, expiry or signature", log)
    if (akid, region, service, terminator) != (config["access_key"], config["region"], "rds-db",
                                               "aws4_request"):
        reject("credential scope does not match", log)
    if day != params["X-Amz-Date"][:8] or not 0 < expires <= 900:
        reject("bad scope date or expiry", log)
    offset_file = Path(config["clock_offset_file"])
    offset = float(offset_file.read_text()) if offset_file.exists() else 0.0
    now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset)
    if now > signed_at + datetime.timedelta(seconds=expires):
        reject("expired", log)
    if signed_at > now + datetime.timedelta(minutes=5):
        reject("signed in the future", log)

    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
        for k, v in sorted((k, v) for k, v in params.items() if k != "X-Amz-Signature"))
    empty_payload = hashlib.sha256(b"").hexdigest()  # RDS tokens sign an empty body
    canonical_request = "\n".join(["GET", "/", canonical_query, f"host:{endpoint}", "", "host",
                                   empty_payload])
    scope = f"{day}/{region}/rds-db/aws4_request"
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = sign(("AWS4" + config["secret_key"]).encode(), day)
    for part in (region, "rds-db", "aws4_request"):
        key = sign(key, part)
    expected_signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected_signature, signature):
        reject("bad signature", log)
    with log.open("a") as f:
        f.write(f"accept {user}\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
