"""Environment properties as Beanstalk users really set them: pasted with a newline or spaces,
in quotes, in another case, with units, a whole URL for a host, two names for one host.

Each value is either read as the operator meant it or refused in the one startup message,
which names the variable, what it got (never a secret) and the fix. tests/test_config.py
holds the rules themselves; this file, what pasting and copying from elsewhere produce.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import localdb
from app import create_app
from app.config import AuthMode, ConfigError, SslMode, SslTrust, load_settings
from app.credentials import region_for

BASE = {"RDS_HOSTNAME": "db.example.internal", "RDS_DB_NAME": "ebdb",
        "RDS_USERNAME": "app", "RDS_PASSWORD": "s3cret-canary"}
ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbCdEf"
SECRETS = {"DB_AUTH": "secretsmanager", "DB_SECRET_ID": ARN}


@pytest.fixture
def bundle(tmp_path):
    """A PEM file holding one CA certificate, as DB_SSL_CA must for the verify-* modes."""
    return str(localdb.make_ca(tmp_path, "rds"))


def refusal(env) -> str:
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    return str(err.value)


# -- white space pasted around a value: read without it ----------------------------------

@pytest.mark.parametrize("var, pasted, field, meant", [
    ("RDS_HOSTNAME", "db.example.internal\n", "host", "db.example.internal"),
    ("RDS_HOSTNAME", " db.example.internal ", "host", "db.example.internal"),
    ("RDS_DB_NAME", " ebdb\n", "database", "ebdb"),
    ("RDS_USERNAME", "app ", "user", "app"),
    ("DB_AUTH", "password\n", "auth", AuthMode.PASSWORD),
    ("API_AUTH", "off ", "api_auth", "off"),
    ("METRICS_NAMESPACE", " FlaskRdsApp", "metrics_namespace", "FlaskRdsApp"),
    ("METRICS_ENVIRONMENT", "prod-env ", "metrics_environment", "prod-env"),
    ("DB_SSL_CA", " /etc/pki/x.pem\n", "ssl_ca", "/etc/pki/x.pem"),
    ("RDS_PORT", " ", "port", 3306),  # nothing but white space: not set, as an empty value
])
def test_surrounding_white_space_is_not_part_of_the_value(var, pasted, field, meant):
    """Before: a host or a database name with the newline in it (the connection then fails
    naming no variable), a metrics dimension that splits the graphs, `off ` refused."""
    assert getattr(load_settings({**BASE, var: pasted}), field) == meant


def test_the_password_is_taken_exactly_as_given():
    """It may begin or end with any character, a space included."""
    settings = load_settings({**BASE, "RDS_PASSWORD": " pw \n"})
    assert settings.password.get_secret_value() == " pw \n"
    assert load_settings({**BASE, "RDS_PASSWORD": '"pw"'}).password.get_secret_value() == '"pw"'


def test_a_region_pasted_with_its_newline_is_a_region_not_a_traceback(bundle):
    """Before: the region check let 'eu-west-1\\n' through (`$` matches before a final
    newline) and botocore raised ValueError: Invalid endpoint: https://rds.eu-west-1\\n...
    out of create_app, a traceback under gunicorn and migrate."""
    env = {**BASE, "DB_AUTH": "iam", "DB_SSL_CA": bundle, "AWS_REGION": "eu-west-1\n"}
    del env["RDS_PASSWORD"]
    app = create_app(env)
    try:
        assert app.extensions["database"].settings.aws_region == "eu-west-1"
    finally:
        app.extensions["database"].dispose()
    assert load_settings({**SECRETS, "DB_SECRET_ID": "prod/db",
                          "AWS_DEFAULT_REGION": " us-east-2\n"}).aws_region == "us-east-2"


# -- another case: the choices are words, read in any case --------------------------------

def test_choices_are_read_in_any_case(bundle):
    settings = load_settings({**BASE, "DB_AUTH": "Password", "DB_SSL_MODE": "REQUIRED",
                              "DB_SSL_TRUST": "RDS-Proxy", "API_AUTH": "All",
                              "API_KEY_SHA256": "A" * 64})
    assert (settings.auth, settings.ssl_mode, settings.ssl_trust, settings.api_auth) == (
        AuthMode.PASSWORD, SslMode.REQUIRED, SslTrust.RDS_PROXY, "all")
    # MySQL's --ssl-mode spelling, and IAM in capitals still defaults to verify-identity.
    assert load_settings({**BASE, "DB_SSL_MODE": "VERIFY_IDENTITY", "DB_SSL_CA": bundle}
                         ).ssl_mode is SslMode.VERIFY_IDENTITY
    iam = load_settings({**BASE, "DB_AUTH": "IAM", "DB_SSL_CA": bundle})
    assert (iam.auth, iam.ssl_mode) == (AuthMode.IAM, SslMode.VERIFY_IDENTITY)


# -- quotes: refused, naming them (a quoted password cannot be told from a real one) ------

@pytest.mark.parametrize("var, value", [
    ("RDS_HOSTNAME", '"db.example.internal"'),
    ("RDS_DB_NAME", '"ebdb"'),
    ("RDS_USERNAME", "'app'"),
    ("RDS_PORT", '"5432"'),
    ("DB_AUTH", '"password"'),
    ("LOG_LEVEL", '"debug"'),
])
def test_a_value_in_quotes_is_refused_naming_the_quotes(var, value):
    """Before: host, database and user were taken with their quotes (a DNS failure, an
    unknown database, a refused login, at the first request), the others refused without
    saying why ("unable to parse string as an integer")."""
    message = refusal({**BASE, var: value})
    assert f"  {var}: is in quotes, which would be part of the value: set it without them " \
           f"(got {value!r}); expected " in message
    assert message.count("\n  ") == 1  # that one variable, not also called unset


def test_quoted_api_key_digests_are_refused_without_showing_them():
    message = refusal({**BASE, "API_AUTH": "all", "API_KEY_SHA256": f'"{"a" * 64}"'})
    assert "  API_KEY_SHA256: is in quotes" in message and "(got 66 characters, not shown)" in message
    assert "a" * 64 not in message and "got neither" not in message


# -- host names: normalised where DNS and TLS do not care, else the fix named -----------

@pytest.mark.parametrize("given, host", [
    ("db.example.internal.", "db.example.internal"),  # a fully qualified name's root dot
    ("DB.Example.INTERNAL", "db.example.internal"),
    ("::1", "::1"),
    ("[::1]", "::1"),
    ("[2001:DB8:0:0::5]", "2001:db8::5"),
])
def test_host_names_are_normalised(given, host):
    assert load_settings({**BASE, "RDS_HOSTNAME": given}).host == host


@pytest.mark.parametrize("endpoint, host, port", [
    ("[::1]:3307", "::1", 3307),
    ("::1", "::1", 3306),
    ("mydb.abc.eu-west-1.rds.amazonaws.com.", "mydb.abc.eu-west-1.rds.amazonaws.com", 3306),
    (" MyDB.abc.eu-west-1.rds.amazonaws.com:3307\n", "mydb.abc.eu-west-1.rds.amazonaws.com", 3307),
])
def test_rds_endpoint_forms(endpoint, host, port):
    env = {k: v for k, v in BASE.items() if k != "RDS_HOSTNAME"}
    settings = load_settings({**env, "RDS_ENDPOINT": endpoint})
    assert (settings.host, settings.port) == (host, port)


@pytest.mark.parametrize("host", ["MyDB.c9akciq32.EU-WEST-1.rds.amazonaws.com",
                                  "mydb.c9akciq32.eu-west-1.rds.amazonaws.com."])
def test_an_iam_token_is_signed_for_the_region_of_an_endpoint_in_any_case(host, bundle):
    """Before: 'AWS_REGION: is required ... RDS_HOSTNAME is not an *.<region>.rds.amazonaws.com
    endpoint', or with AWS_REGION set, a token signed for that region, which RDS refuses."""
    env = {**BASE, "DB_AUTH": "iam", "DB_SSL_CA": bundle, "RDS_HOSTNAME": host}
    settings = load_settings(env)
    assert region_for(settings, None) == region_for(settings, "us-east-1") == "eu-west-1"


@pytest.mark.parametrize("var, value, fix", [
    ("RDS_HOSTNAME", "db.example.internal:3307", "here the host is 'db.example.internal' and the port 3307 (RDS_PORT)"),
    ("RDS_HOSTNAME", "mysql://db.example.internal/ebdb", "here the host is 'db.example.internal'"),
    ("RDS_ENDPOINT", "mydb.abc.rds.amazonaws.com:3306/", "here the host is 'mydb.abc.rds.amazonaws.com' and the port 3306"),
    ("RDS_HOSTNAME", "dé.example", "it holds 'é', which no host name has"),
    ("RDS_HOSTNAME", "db..example", "two dots in a row"),
])
def test_a_host_that_is_no_bare_host_name_names_the_host_to_set(var, value, fix):
    env = {k: v for k, v in BASE.items() if k != "RDS_HOSTNAME"}
    message = refusal({**env, var: value})
    assert f"  {var}: must be a bare host name" in message and fix in message
    assert f"(got {value!r})" in message and "is required" not in message


def test_a_url_with_a_password_in_it_is_not_echoed():
    """Before: 'RDS_HOSTNAME: must be a bare host name ... (got
    'mysql://app:s3cret-canary@db:3306/ebdb')', the password in the message and the log."""
    for var in ("RDS_HOSTNAME", "RDS_ENDPOINT"):
        env = {k: v for k, v in BASE.items() if k != "RDS_HOSTNAME"}
        message = refusal({**env, var: "mysql://app:s3cret-canary@db.example.internal:3306/ebdb"})
        assert "s3cret-canary" not in message
        assert f"(got 'mysql://<hidden>@db.example.internal:3306/ebdb')" in message
        assert "here the host is 'db.example.internal' and the port 3306" in message


# -- two variables for one thing: they must agree ----------------------------------------

def test_rds_endpoint_naming_another_host_than_rds_hostname_is_refused():
    """Before: RDS_HOSTNAME won without a word (an RDS Proxy endpoint set as RDS_ENDPOINT in an
    environment Beanstalk had coupled to the instance: the app kept going to the instance)."""
    message = refusal({**BASE, "RDS_ENDPOINT": "app-proxy.proxy-abc.eu-west-1.rds.amazonaws.com"})
    assert ("  RDS_ENDPOINT: names another host than RDS_HOSTNAME ('db.example.internal'); set "
            "RDS_HOSTNAME to the database's host and unset RDS_ENDPOINT (got "
            "'app-proxy.proxy-abc.eu-west-1.rds.amazonaws.com')") in message
    # The same host, written another way, is no conflict; its port counts.
    settings = load_settings({**BASE, "RDS_ENDPOINT": "DB.example.internal.:3307"})
    assert (settings.host, settings.port) == ("db.example.internal", 3307)


def test_rds_endpoint_and_rds_port_giving_two_ports_is_refused():
    """Before: RDS_PORT won over the endpoint's port without a word."""
    env = {k: v for k, v in BASE.items() if k != "RDS_HOSTNAME"}
    message = refusal({**env, "RDS_ENDPOINT": "mydb.abc:3306", "RDS_PORT": "3307"})
    assert ("  RDS_PORT: differs from the port in RDS_ENDPOINT (3306); unset RDS_PORT or remove "
            "the port from RDS_ENDPOINT, so that one of them says it (got '3307')") in message
    assert load_settings({**env, "RDS_ENDPOINT": "mydb.abc:3307", "RDS_PORT": "3307"}).port == 3307


# -- secret ids ----------------------------------------------------------------------------

@pytest.mark.parametrize("var, env", [
    ("DB_SECRET_ID", SECRETS),
    ("API_KEYS_SECRET_ID", {**BASE, "API_AUTH": "all"}),
])
@pytest.mark.parametrize("suffix", [":password::", "::AWSCURRENT:", ":username:AWSPREVIOUS:"])
def test_a_secret_arn_with_an_ecs_style_suffix_names_the_arn_to_set(var, env, suffix):
    """Before: accepted, then GetSecretValue answered ResourceNotFoundException and the message
    said to check that the secret exists, which it does."""
    message = refusal({**env, var: ARN + suffix})
    assert f"  {var}: has {suffix[1:]!r} after the secret's ARN" in message
    assert f"give the ARN alone, {ARN};" in message
    assert message.count("\n  ") == 1, message  # not also "required" or "got neither"


def test_another_services_arn_is_no_secret_id():
    message = refusal({**SECRETS, "DB_SECRET_ID": "arn:aws:rds:eu-west-1:123456789012:db:mydb"})
    assert "  DB_SECRET_ID: is not the ARN of a Secrets Manager secret" in message


def test_the_secrets_arn_region_wins_over_aws_region():
    settings = load_settings({**SECRETS, "AWS_REGION": "us-east-1"})
    assert region_for(settings, settings.aws_region) == "eu-west-1"


# -- units and forms -----------------------------------------------------------------------

@pytest.mark.parametrize("var, value", [("DB_POOL_TIMEOUT", "30s"), ("DB_CONNECT_TIMEOUT", "5 s"),
                                        ("DB_POOL_MAX_LIFETIME", "30m")])
def test_a_number_with_a_unit_says_so(var, value):
    assert f"  {var}: must be a plain number, without a unit (got {value!r})" in refusal({**BASE, var: value})


def test_a_pattern_is_not_shown_as_a_regular_expression():
    message = refusal({**BASE, "API_AUTH": "true", "METRICS_ENVIRONMENT": "prod-é"})
    assert "  API_AUTH: is not of the form expected (got 'true'); expected one of: off, writes, all" in message
    assert "^(" not in message and "]{" not in message


# -- every bad variable in one message, through the paths an operator takes --------------

PASTED = {**BASE, "RDS_HOSTNAME": "mysql://app:s3cret-canary@db.example.internal:3306/ebdb",
          "RDS_DB_NAME": '"ebdb"', "DB_POOL_TIMEOUT": "30s", "LOG_LEVEL": "verbose"}
NAMED = ("RDS_HOSTNAME: must be a bare host name", "RDS_DB_NAME: is in quotes",
         "LOG_LEVEL: is not a log level", "DB_POOL_TIMEOUT: must be a plain number")


def test_a_bad_log_level_does_not_hide_the_other_bad_variables():
    """Before: create_app checked LOG_LEVEL first and stopped there: the message named it
    alone, and the next deployment found the next variable."""
    with pytest.raises(ConfigError) as err:
        create_app(PASTED)
    for named in NAMED:
        assert f"\n  {named}" in str(err.value)
    assert "s3cret-canary" not in str(err.value)


def _clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RDS_", "DB_", "LOG_", "API_", "AWS_", "METRICS_"))}
    return {**env, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
            **extra}


def test_gunicorn_and_migrate_name_every_pasted_mistake_without_a_traceback_or_the_password():
    from conftest import ROOT, procfile_command

    env = _clean_env(**PASTED, WEB_CONCURRENCY="1", PORT=str(localdb.free_port()))
    web = subprocess.run(procfile_command(), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    migrate = subprocess.run([sys.executable, "-m", "app.migrate"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    for result in (web, migrate):
        output = result.stdout + result.stderr
        assert "Traceback" not in output and "s3cret-canary" not in output
        for named in NAMED:
            assert output.count(f"\n  {named}") == 1, (named, output)
    assert web.returncode == 4 and "App failed to load" in web.stdout + web.stderr
    assert migrate.returncode == 2 and migrate.stderr.startswith("migrate: Invalid configuration")


def test_a_url_with_a_password_in_the_secrets_host_field_is_not_echoed():
    from app.config import complete_from_secret

    url = "mysql://app:s3cret-canary@db.example.internal:3306/ebdb"
    with pytest.raises(ConfigError) as err:
        complete_from_secret(load_settings(SECRETS), {"host": ("host", url)}, ARN)
    assert "s3cret-canary" not in str(err.value)
    assert f'secret {ARN} field "host": must be a bare host name' in str(err.value)
