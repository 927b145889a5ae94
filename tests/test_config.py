import ssl

import pytest

import localdb
from app import create_app
from app.config import EXPECTED, RDS_CA_BUNDLE_URL, AuthMode, ConfigError, SslMode, load_settings

BASE = {"RDS_HOSTNAME": "db.example.internal", "RDS_DB_NAME": "ebdb",
        "RDS_USERNAME": "app", "RDS_PASSWORD": "s3cret-canary"}


def test_defaults_fit_beanstalk():
    s = load_settings(BASE)
    assert (s.host, s.port, s.database, s.user) == ("db.example.internal", 3306, "ebdb", "app")
    assert s.password.get_secret_value() == "s3cret-canary"
    assert s.auth is AuthMode.PASSWORD and s.ssl_mode is SslMode.REQUIRED
    assert s.ssl_ca == "/etc/pki/tls/certs/rds-global-bundle.pem"
    assert (s.pool_size, s.pool_timeout, s.pool_max_lifetime, s.pool_idle_ping) == (8, 2.0, 1800.0, 30.0)
    assert (s.connect_timeout, s.read_timeout) == (5, 30)


def test_rds_endpoint_is_an_alias_and_may_carry_the_port():
    env = {**BASE, "RDS_ENDPOINT": "mydb.abc.eu-west-1.rds.amazonaws.com:3307"}
    del env["RDS_HOSTNAME"]
    s = load_settings(env)
    assert (s.host, s.port) == ("mydb.abc.eu-west-1.rds.amazonaws.com", 3307)
    # Both set: they must name the same host (tests/test_config_values.py), whose port then counts.
    assert load_settings({**BASE, "RDS_ENDPOINT": "db.example.internal:1"}).port == 1


def test_missing_variables_are_all_named_with_the_fix():
    with pytest.raises(ConfigError) as err:
        load_settings({"RDS_PORT": "3306"})
    message = str(err.value)
    for var in ("RDS_HOSTNAME", "RDS_DB_NAME", "RDS_USERNAME"):
        assert f"{var}: is required (got not set)" in message
    assert "eb setenv" in message and "scripts/run-local" in message


def test_malformed_and_missing_variables_are_named_in_the_same_message():
    """pydantic skips the checks between variables once a value is malformed: the missing ones
    must still be named now, not on the next start."""
    with pytest.raises(ConfigError) as err:
        load_settings({"RDS_PORT": "abc", "DB_POOL_SIZE": "0", "API_AUTH": "all"})
    lines = str(err.value).splitlines()
    assert lines[0] == "Invalid configuration (environment properties):" and "eb setenv" in lines[-1]
    named = [line.strip().split(":")[0].split(" ")[0].split("=")[0] for line in lines[1:-1]]
    assert named == ["RDS_PORT", "DB_POOL_SIZE", "RDS_HOSTNAME", "RDS_DB_NAME", "RDS_USERNAME",
                     "RDS_PASSWORD", "API_AUTH"]
    assert "  RDS_HOSTNAME: is required (got not set); expected " in str(err.value)


NO_PASSWORD = {k: v for k, v in BASE.items() if k != "RDS_PASSWORD"}


@pytest.mark.parametrize("env, said, not_said", [
    ({**NO_PASSWORD, "RDS_HOSTNAME": "mysql://db"}, "RDS_PASSWORD is required", "RDS_HOSTNAME: is required"),
    ({**NO_PASSWORD, "RDS_DB_NAME": "x" * 65}, "RDS_PASSWORD is required", "RDS_DB_NAME: is required"),
    ({k: v for k, v in NO_PASSWORD.items() if k != "RDS_HOSTNAME"} | {"RDS_ENDPOINT": "db:abc"},
     "RDS_PASSWORD is required", "RDS_HOSTNAME: is required"),
    # Which variables DB_AUTH needs depends on its value: none is called missing.
    ({"DB_AUTH": "secretmanager", "DB_SECRET_ID": "prod/db", "API_AUTH": "all"},
     "API_AUTH=all needs", "is required"),
])
def test_a_malformed_variable_is_not_also_called_unset(env, said, not_said):
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert said in str(err.value) and not_said not in str(err.value)


@pytest.mark.parametrize("var, value, expected", [
    ("RDS_PORT", "abc", "RDS_PORT"),
    ("RDS_PORT", "70000", "between 1 and 65535"),
    ("DB_AUTH", "kerberos", "one of: password, secretsmanager, iam"),
    ("DB_SSL_MODE", "preferred", "one of: disabled, required, verify-ca, verify-identity"),
    ("DB_POOL_SIZE", "0", "DB_POOL_SIZE"),
    ("DB_POOL_TIMEOUT", "-1", "DB_POOL_TIMEOUT"),
    ("DB_POOL_MAX_LIFETIME", "soon", "DB_POOL_MAX_LIFETIME"),
    ("DB_POOL_IDLE_PING", "-5", "DB_POOL_IDLE_PING"),
    ("DB_CONNECT_TIMEOUT", "2.5", "DB_CONNECT_TIMEOUT"),
    ("DB_READ_TIMEOUT", "0", "DB_READ_TIMEOUT"),
    ("RDS_HOSTNAME", "mysql://db:3306", "bare host name"),
])
def test_invalid_values_name_the_variable_and_the_value(var, value, expected):
    with pytest.raises(ConfigError) as err:
        load_settings({**BASE, var: value})
    message = str(err.value)
    assert f"{var}:" in message and expected in message and repr(value) in message


def test_password_is_required_in_password_mode_and_never_echoed():
    with pytest.raises(ConfigError, match="RDS_PASSWORD is required"):
        load_settings({k: v for k, v in BASE.items() if k != "RDS_PASSWORD"})
    with pytest.raises(ConfigError) as err:
        load_settings({**BASE, "RDS_PORT": "x", "DB_POOL_SIZE": "0"})
    assert "s3cret-canary" not in str(err.value)
    assert "s3cret-canary" not in repr(load_settings(BASE))


@pytest.fixture
def bundle(tmp_path):
    """A PEM file holding one CA certificate, as DB_SSL_CA must."""
    return localdb.make_ca(tmp_path, "rds")


def test_verifying_tls_needs_the_ca_bundle_file(bundle):
    with pytest.raises(ConfigError, match="DB_SSL_CA: no file at '/etc/pki/tls/certs/rds-global-bundle.pem'"):
        load_settings({**BASE, "DB_SSL_MODE": "verify-identity"})
    s = load_settings({**BASE, "DB_SSL_MODE": "verify-ca", "DB_SSL_CA": str(bundle)})
    assert s.ssl_ca == str(bundle)


@pytest.mark.parametrize("content", [
    lambda ca: b"mydb-host\n",  # DB_SSL_CA=/etc/hostname
    lambda ca: b"-----BEGIN CERTIFICATE-----\n",  # a download cut short
    lambda ca: ca.with_suffix(".key").read_bytes(),  # the CA's private key, not its certificate
    lambda ca: ssl.PEM_cert_to_DER_cert(ca.read_text()),  # a certificate, but not PEM
], ids=["hostname", "truncated", "key", "der"])
@pytest.mark.parametrize("mode", ["verify-ca", "verify-identity"])
def test_a_file_that_is_no_ca_bundle_is_named_at_startup(bundle, tmp_path, content, mode):
    """The driver would fail every connection with OpenSSL's words and no variable name."""
    path = tmp_path / "not-a-bundle"
    path.write_bytes(content(bundle))
    with pytest.raises(ConfigError) as err:
        create_app({**BASE, "DB_SSL_MODE": mode, "DB_SSL_CA": str(path)})
    message = str(err.value)
    assert f"  DB_SSL_CA: {str(path)!r} is not a PEM bundle of CA certificates (" in message
    assert f"needed for DB_SSL_MODE={mode}" in message and RDS_CA_BUNDLE_URL in message
    # Not checked where it is not used.
    assert load_settings({**BASE, "DB_SSL_MODE": "required", "DB_SSL_CA": str(path)}).ssl_ca == str(path)


def test_the_bundle_url_in_the_message_is_the_one_the_prebuild_hook_fetches():
    from conftest import ROOT

    hook = (ROOT / ".platform/hooks/prebuild/01_rds_ca_bundle.sh").read_text()
    assert f'URL="${{RDS_CA_BUNDLE_URL:-{RDS_CA_BUNDLE_URL}}}"' in hook


def test_secretsmanager_mode_needs_only_the_secret():
    s = load_settings({"DB_AUTH": "secretsmanager", "DB_SECRET_ID": "prod/db"})
    assert s.auth is AuthMode.SECRETS_MANAGER and s.host is None and s.secret_id == "prod/db"
    with pytest.raises(ConfigError, match="DB_SECRET_ID is required when DB_AUTH=secretsmanager"):
        load_settings({**BASE, "DB_AUTH": "secretsmanager"})


def test_iam_mode_defaults_to_verify_identity_and_refuses_weaker_tls(bundle):
    env = {**BASE, "DB_AUTH": "iam", "DB_SSL_CA": str(bundle)}
    del env["RDS_PASSWORD"]
    assert load_settings(env).ssl_mode is SslMode.VERIFY_IDENTITY
    assert load_settings({**env, "DB_SSL_MODE": "verify-ca"}).ssl_mode is SslMode.VERIFY_CA
    for weak in ("disabled", "required"):
        with pytest.raises(ConfigError, match=f"DB_SSL_MODE={weak} is not allowed with DB_AUTH=iam"):
            load_settings({**env, "DB_SSL_MODE": weak})


@pytest.mark.parametrize("host, region", [
    ("mydb.c9akciq32.eu-west-1.rds.amazonaws.com", "eu-west-1"),
    ("app-proxy.proxy-c9akciq32.us-east-2.rds.amazonaws.com", "us-east-2"),
    ("mydb.c9akciq32.us-gov-west-1.rds.amazonaws.com", "us-gov-west-1"),
    ("mydb.c9akciq32.cn-north-1.rds.amazonaws.com.cn", "cn-north-1"),
])
def test_iam_region_comes_from_rds_and_proxy_endpoints(host, region):
    from app.credentials import region_for

    assert region_for(load_settings({**BASE, "RDS_HOSTNAME": host}), None) == region
    assert region_for(load_settings({**BASE, "RDS_HOSTNAME": host}), "ap-south-1") == "ap-south-1"


def test_iam_region_must_be_known():
    from app.credentials import region_for

    with pytest.raises(ConfigError, match="AWS_REGION: is required"):
        region_for(load_settings(BASE), None)
    with pytest.raises(ConfigError, match="AWS_REGION: is not an AWS region name"):
        load_settings({**SECRETS, "AWS_REGION": "moon-base"})


SECRETS = {"DB_AUTH": "secretsmanager", "DB_SECRET_ID": "prod/db"}


def _regions_of_every_partition() -> list[str]:
    import botocore.loaders

    partitions = botocore.loaders.Loader().load_data("partitions")["partitions"]
    return [region for p in partitions for region in p["regions"] if not region.endswith("-global")]


def test_every_partitions_regions_are_accepted():
    """GovCloud, China, the ISO partitions and the European Sovereign Cloud (eusc-de-east-1)."""
    regions = _regions_of_every_partition()
    assert {"us-gov-west-1", "cn-north-1", "us-iso-east-1", "us-isob-east-1", "eusc-de-east-1"} <= set(regions)
    for region in regions:
        assert load_settings({**SECRETS, "AWS_REGION": region}).aws_region == region


@pytest.mark.parametrize("env", [
    SECRETS,
    {**BASE, "API_KEYS_SECRET_ID": "prod/api-keys"},  # read from Secrets Manager in any DB_AUTH
])
@pytest.mark.parametrize("value", ["eu-west-1a", "EU-WEST-1", "eu-west", "<region>"])
def test_a_region_that_is_used_is_checked_and_named_as_the_variable_set(env, value):
    """AWS_DEFAULT_REGION stands in for an unset AWS_REGION: an error names the one set."""
    with pytest.raises(ConfigError) as err:
        load_settings({**env, "AWS_DEFAULT_REGION": value})
    assert f"  AWS_DEFAULT_REGION: is not an AWS region name (got {value!r}); expected " in str(err.value)
    assert "AWS_REGION:" not in str(err.value)
    assert load_settings({**env, "AWS_DEFAULT_REGION": value, "AWS_REGION": "eu-west-1"}).aws_region == "eu-west-1"


def test_a_region_no_aws_call_uses_does_not_stop_the_app():
    """DB_AUTH=password calls no AWS API: a region set there for other tools is not checked."""
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        assert load_settings({**BASE, var: "eu-west-1a"}).auth is AuthMode.PASSWORD


def test_empty_property_means_unset():
    assert load_settings({**BASE, "RDS_PORT": "", "DB_POOL_SIZE": ""}).port == 3306


def test_the_app_refuses_to_start_on_bad_configuration():
    with pytest.raises(ConfigError, match="RDS_HOSTNAME"):
        create_app({})


@pytest.mark.parametrize("endpoint, expected", [
    ("mysql://db:3306/", "bare host name"),
    ("db host", "bare host name"),
    ("db.example.internal:abc", "port"),
    ("db.example.internal:70000", "between 1 and 65535"),
])
def test_a_bad_rds_endpoint_is_named_as_rds_endpoint(endpoint, expected):
    """RDS_ENDPOINT feeds host and port: an error in either part names RDS_ENDPOINT and its value."""
    env = {k: v for k, v in BASE.items() if k != "RDS_HOSTNAME"}
    with pytest.raises(ConfigError) as err:
        load_settings({**env, "RDS_ENDPOINT": endpoint})
    message = str(err.value)
    assert f"RDS_ENDPOINT: " in message and f"(got {endpoint!r})" in message and expected in message
    assert "got not set" not in message


@pytest.mark.parametrize("value", ["verbose", "5", "warn"])
def test_an_invalid_log_level_is_a_config_error(value):
    with pytest.raises(ConfigError) as err:
        load_settings({**BASE, "LOG_LEVEL": value})
    assert f"LOG_LEVEL: " in str(err.value) and f"(got {value!r})" in str(err.value)
    assert EXPECTED["LOG_LEVEL"] in str(err.value)


def test_log_level_is_case_insensitive():
    assert load_settings({**BASE, "LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert load_settings(BASE).log_level == "INFO"


def test_an_invalid_log_level_stops_create_app_with_the_standard_message():
    with pytest.raises(ConfigError) as err:
        create_app({**BASE, "LOG_LEVEL": "verbose"})
    lines = str(err.value).splitlines()
    assert lines[0] == "Invalid configuration (environment properties):"
    assert lines[1] == f"  LOG_LEVEL: is not a log level (got 'verbose'); expected {EXPECTED['LOG_LEVEL']}."
    assert "eb setenv" in lines[-1]


def test_every_message_line_names_a_documented_variable():
    """Each problem line starts with a variable that EXPECTED (and so the README table) documents."""
    env = {"RDS_ENDPOINT": "x:y", "RDS_DB_NAME": "", "DB_AUTH": "nope", "DB_POOL_SIZE": "0",
           "LOG_LEVEL": "loud", "DB_SSL_MODE": "x"}
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    problems = str(err.value).splitlines()[1:-1]
    assert len(problems) >= 5
    for line in problems:
        var = line.strip().split(":")[0]
        assert var in EXPECTED or var == "RDS_ENDPOINT", line


def test_readme_table_agrees_with_the_settings():
    """EXPECTED and Settings are the source; the README's table must show the same defaults
    and the same choices, so a changed default or a new choice cannot leave it behind."""
    import enum
    import re

    from app.config import Settings, _FIELD_TO_VAR
    from conftest import ROOT

    rows: dict[str, tuple[str, str]] = {}
    for m in re.finditer(r"^\| `([A-Z0-9_]+)` \| (.*?) \| (.*?) \|$",
                         (ROOT / "README.md").read_text(), re.MULTILINE):
        rows.setdefault(m[1], (m[2], m[3]))  # the settings table comes first
    assert set(EXPECTED) <= set(rows)
    for name, field in Settings.model_fields.items():
        var = _FIELD_TO_VAR[name]
        default_cell, meaning = rows[var]
        default = field.default
        if isinstance(default, enum.Enum):
            default = default.value
        if default is not None:
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert default_cell.startswith(f"`{shown}`"), (var, default_cell)
        choices = re.findall(r"one of: ([^(]+)", EXPECTED[var])
        for choice in choices[0].split(", ") if choices else ():
            assert f"`{choice.strip()}`" in meaning, (var, choice)


@pytest.mark.parametrize("env, expected", [
    ({**BASE, "DB_POOL_SIZE": "lots"}, "  DB_POOL_SIZE: "),
    ({**BASE, "LOG_LEVEL": "verbose"}, "  LOG_LEVEL: is not a log level (got 'verbose')"),
])
def test_gunicorn_stops_with_the_message_and_no_traceback(env, expected):
    """What an operator sees in web.stdout.log when the Procfile's gunicorn cannot load the app."""
    import os
    import subprocess
    import sys

    import localdb
    from conftest import ROOT, procfile_command

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "LOG_"))}
    full_env.update(env, WEB_CONCURRENCY="1", PORT=str(localdb.free_port()),
                    PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(procfile_command(), cwd=ROOT, env=full_env, capture_output=True,
                            text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert expected in output and "eb setenv" in output
    assert output.count(expected) == 1
    assert "Traceback" not in output and "App failed to load" in output
    assert "s3cret-canary" not in output


def test_the_deployed_defaults_are_valid_settings(bundle):
    """.ebextensions/01-environment.config sets properties on every environment: each must be
    a documented variable with a value load_settings accepts (a typo there stops every instance)."""
    import yaml

    from conftest import ROOT

    config = yaml.safe_load((ROOT / ".ebextensions" / "01-environment.config").read_text())
    properties = config["option_settings"]["aws:elasticbeanstalk:application:environment"]
    gunicorn = {"PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_TIMEOUT"}
    assert set(properties) <= set(EXPECTED) | gunicorn
    # bundle: the prebuild hook installs one on an instance
    env = {k: str(v) for k, v in properties.items() if k in EXPECTED and k != "AWS_REGION"}
    # 01 sets API_AUTH=all; the key's digest comes with eb create --envvars (README).
    digest = "0" * 64
    settings = load_settings({**BASE, **env, "DB_SSL_CA": str(bundle), "API_KEY_SHA256": digest})
    assert settings.log_level == "INFO"
