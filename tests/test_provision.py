"""scripts/provision against moto's EC2, IAM, RDS, STS and Secrets Manager (no AWS account here).

A VPC with an RDS instance is set up as an operator would have it; the script must find it,
plan, apply, and on a second run find nothing to change. Its policies go through parliament.
"""

import json
import os
import re
import subprocess

import boto3
import pytest
import yaml
from moto import mock_aws

from conftest import ROOT, load_script, readme_lines

REGION = "eu-west-1"


provision = load_script("provision")
rehearsal = load_script("rehearse-deploy")


@pytest.fixture
def aws(monkeypatch):
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    # AWS managed policies (AWSElasticBeanstalkWebTier) exist in a real account; moto loads them on request.
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    with mock_aws():
        ec2 = boto3.client("ec2", REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24",
                                     AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
                   for i, az in ((1, "a"), (2, "b"))]
        db_group = ec2.create_security_group(GroupName="appdb-sg", Description="database",
                                             VpcId=vpc)["GroupId"]
        rds = boto3.client("rds", REGION)
        rds.create_db_subnet_group(DBSubnetGroupName="appdb-subnets", DBSubnetGroupDescription="db",
                                   SubnetIds=subnets)
        instance = rds.create_db_instance(
            DBInstanceIdentifier="appdb", DBInstanceClass="db.t4g.micro", Engine="mysql",
            MasterUsername="admin", MasterUserPassword="master-password-1", AllocatedStorage=20,
            VpcSecurityGroupIds=[db_group], DBSubnetGroupName="appdb-subnets", DBName="ebdb")["DBInstance"]
        yield {"vpc": vpc, "db_group": db_group, "resource_id": instance["DbiResourceId"],
               "host": instance["Endpoint"]["Address"], "ec2": ec2, "rds": rds,
               "iam": boto3.client("iam", REGION), "sm": boto3.client("secretsmanager", REGION)}


def run(capsys, *args):
    code = provision.main(["--db-instance", "appdb", "--region", REGION, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def state(aws):
    """Everything provision may touch, for before/after comparisons."""
    groups = aws["ec2"].describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [aws["vpc"]]}])
    roles = aws["iam"].list_roles()["Roles"]
    return {
        "groups": sorted((g["GroupName"], json.dumps(g["IpPermissions"], sort_keys=True))
                         for g in groups["SecurityGroups"]),
        "roles": {r["RoleName"]: aws["iam"].list_role_policies(RoleName=r["RoleName"])["PolicyNames"]
                  for r in roles},
        "policies": {r["RoleName"]: [aws["iam"].get_role_policy(RoleName=r["RoleName"], PolicyName=p)
                                     ["PolicyDocument"] for p in aws["iam"].list_role_policies(
                                         RoleName=r["RoleName"])["PolicyNames"]] for r in roles},
        "profiles": sorted(p["InstanceProfileName"] for p in aws["iam"].list_instance_profiles()["InstanceProfiles"]),
        "secrets": sorted(s["Name"] for s in aws["sm"].list_secrets()["SecretList"]),
        "iam_auth": aws["rds"].describe_db_instances(DBInstanceIdentifier="appdb")["DBInstances"][0][
            "IAMDatabaseAuthenticationEnabled"],
    }


def parliament_findings(document: dict) -> str:
    iac = os.environ.get("IAC_VENV", str(ROOT / ".venv-iac"))
    result = subprocess.run([f"{iac}/bin/parliament", "--string", json.dumps(document)],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, result.stderr
    return (result.stdout + result.stderr).strip()


def test_dry_run_plans_and_changes_nothing(aws, capsys, tmp_path):
    before = state(aws)
    code, out, _ = run(capsys, "--auth", "iam", "--create-role", "--dry-run",
                       "--write-options", str(tmp_path / "options.config"))
    assert code == 0
    assert f"{aws['resource_id']}, VPC {aws['vpc']}, security group {aws['db_group']}" in out
    for planned in ("would     create security group appdb-app-instances",
                    f"would     allow tcp/3306 into {aws['db_group']}",
                    "would     enable IAM database authentication on appdb",
                    "would     create role aws-elasticbeanstalk-ec2-role",
                    "would     create instance profile aws-elasticbeanstalk-ec2-role"):
        assert planned in out, planned
    assert "dry run: 7 change(s) planned, none made" in out
    assert state(aws) == before
    assert not (tmp_path / "options.config").exists()


def test_iam_mode_applies_least_privilege_then_changes_nothing(aws, capsys, tmp_path):
    options = tmp_path / "02-database-options.config"
    code, out, _ = run(capsys, "--auth", "iam", "--create-role", "--write-options", str(options))
    assert code == 0, out
    assert "7 change(s) made" in out

    app_group = aws["ec2"].describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["appdb-app-instances"]}])["SecurityGroups"][0]
    assert app_group["VpcId"] == aws["vpc"]
    rules = aws["ec2"].describe_security_groups(GroupIds=[aws["db_group"]])["SecurityGroups"][0]["IpPermissions"]
    assert len(rules) == 1
    rule = rules[0]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 3306, 3306)
    assert rule["IpRanges"] == [] and rule.get("Ipv6Ranges", []) == []  # no CIDR, never 0.0.0.0/0
    assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [app_group["GroupId"]]
    description = rule["UserIdGroupPairs"][0]["Description"]
    assert description == "MySQL from the Beanstalk instances of the app (appdb-app-instances)"
    # moto accepts any text; EC2 refuses characters outside this set (an apostrophe, say).
    assert rehearsal.RULE_DESCRIPTION.fullmatch(description)

    iam = aws["iam"]
    role = "aws-elasticbeanstalk-ec2-role"
    trust = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    profile = iam.get_instance_profile(InstanceProfileName=role)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [role]
    document = iam.get_role_policy(RoleName=role, PolicyName="app-database-access")["PolicyDocument"]
    assert document["Statement"] == [{
        "Sid": "ConnectAsTheAppUser", "Effect": "Allow", "Action": "rds-db:connect",
        "Resource": f"arn:aws:rds-db:{REGION}:123456789012:dbuser:{aws['resource_id']}/app"}]
    assert parliament_findings(document) == ""
    assert state(aws)["iam_auth"] is True

    assert "IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS' REQUIRE SSL" in out
    assert "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, REFERENCES ON `ebdb`.* TO 'app'@'%'" in out
    assert f"eb setenv DB_AUTH=iam RDS_HOSTNAME={aws['host']} RDS_PORT=3306 RDS_DB_NAME=ebdb " \
           f"RDS_USERNAME=app AWS_REGION={REGION}" in out
    written = yaml.safe_load(options.read_text())["option_settings"]
    assert written["aws:elasticbeanstalk:customoption"]["DatabaseResourceId"] == aws["resource_id"]
    assert written["aws:elasticbeanstalk:customoption"]["DatabaseSecurityGroupId"] == aws["db_group"]
    assert written["aws:autoscaling:launchconfiguration"]["SecurityGroups"] == app_group["GroupId"]

    after_first = state(aws)
    code, out, _ = run(capsys, "--auth", "iam", "--create-role")
    assert code == 0
    assert "provision: nothing to change" in out and "would" not in out and "change  " not in out
    assert state(aws) == after_first


def test_secretsmanager_mode_creates_the_secret_without_printing_it(aws, capsys):
    key = boto3.client("kms", REGION).create_key(Description="app secrets")["KeyMetadata"]["Arn"]
    aws["iam"].create_role(RoleName="app-ec2", AssumeRolePolicyDocument=json.dumps(provision.EC2_TRUST))
    args = ("--auth", "secretsmanager", "--create-secret", "--kms-key-arn", key, "--role-name", "app-ec2")
    code, out, err = run(capsys, *args)
    assert code == 0, out + err
    secret = aws["sm"].get_secret_value(SecretId="appdb/app")
    value = json.loads(secret["SecretString"])
    assert {k: value[k] for k in ("engine", "host", "port", "dbname", "username")} == {
        "engine": "mysql", "host": aws["host"], "port": 3306, "dbname": "ebdb", "username": "app"}
    assert len(value["password"]) == 32
    assert value["password"] not in out + err
    assert aws["sm"].describe_secret(SecretId="appdb/app")["KmsKeyId"] == key

    document = aws["iam"].get_role_policy(RoleName="app-ec2", PolicyName="app-database-access")["PolicyDocument"]
    assert [(s["Action"], s["Resource"]) for s in document["Statement"]] == [
        ("secretsmanager:GetSecretValue", secret["ARN"]), ("kms:Decrypt", key)]
    assert parliament_findings(document) == ""
    assert f"DB_SECRET_ID={secret['ARN']}" in out

    before = state(aws)
    code, out, _ = run(capsys, *args)
    assert code == 0 and "provision: nothing to change" in out
    assert state(aws) == before
    assert json.loads(aws["sm"].get_secret_value(SecretId="appdb/app")["SecretString"]) == value


def test_switching_to_password_mode_removes_the_grant(aws, capsys):
    assert run(capsys, "--auth", "iam", "--create-role")[0] == 0
    code, out, _ = run(capsys, "--auth", "password")
    assert code == 0
    assert "remove inline policy app-database-access" in out
    assert aws["iam"].list_role_policies(RoleName="aws-elasticbeanstalk-ec2-role")["PolicyNames"] == []
    assert "RDS_PASSWORD='<password>'" in out


def test_errors_say_what_to_fix(aws, capsys):
    code, _, err = run(capsys, "--auth", "iam")
    assert code == 2
    assert "IAM role 'aws-elasticbeanstalk-ec2-role' not found" in err
    assert "instance PROFILE" in err and "--create-role" in err

    code, _, err = run(capsys, "--auth", "secretsmanager", "--create-role")
    assert code == 2 and "secret 'appdb/app' not found; pass --create-secret" in err

    code = provision.main(["--db-instance", "nope", "--region", REGION])
    err = capsys.readouterr().err
    assert code == 2 and "no RDS instance 'nope' in eu-west-1" in err


def test_instance_without_a_database_gets_create_database_in_the_sql(aws, capsys):
    aws["rds"].create_db_instance(
        DBInstanceIdentifier="nodb", DBInstanceClass="db.t4g.micro", Engine="mysql", MasterUsername="admin",
        MasterUserPassword="master-password-1", AllocatedStorage=20, VpcSecurityGroupIds=[aws["db_group"]],
        DBSubnetGroupName="appdb-subnets")
    code = provision.main(["--db-instance", "nodb", "--region", REGION, "--auth", "iam", "--create-role"])
    out = capsys.readouterr().out
    assert code == 0
    assert "CREATE DATABASE IF NOT EXISTS `ebdb`;" in out
    code, out, _ = run(capsys, "--auth", "iam")  # appdb has its database
    assert code == 0 and "CREATE USER IF NOT EXISTS 'app'" in out and "CREATE DATABASE" not in out


def test_readme_provision_commands(aws, capsys, tmp_path):
    """The README's two lines, as written, against the moto account (options go to a temp file)."""
    import shlex

    lines = readme_lines("scripts/provision")
    assert len(lines) == 2 and lines[0].endswith("--dry-run")
    options = tmp_path / "02-database-options.config"
    outputs = []
    for line in lines:
        args = shlex.split(line.replace(".ebextensions/02-database-options.config", str(options)))
        assert args[:2] == [".venv/bin/python", "scripts/provision"]
        assert provision.main(args[2:]) == 0
        outputs.append(capsys.readouterr().out)
    assert "dry run: 7 change(s) planned, none made" in outputs[0]
    assert "7 change(s) made" in outputs[1]
    assert yaml.safe_load(options.read_text())["option_settings"]["aws:elasticbeanstalk:customoption"][
        "DatabaseResourceId"] == aws["resource_id"]
    envvars = re.search(r"eb create ENVIRONMENT --envvars (\S+)", outputs[1])[1]
    assert envvars == (f"DB_AUTH=iam,RDS_HOSTNAME={aws['host']},RDS_PORT=3306,RDS_DB_NAME=ebdb,"
                       f"RDS_USERNAME=app,AWS_REGION={REGION}")
