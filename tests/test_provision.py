"""scripts/provision against moto's EC2, IAM, RDS, STS, KMS, ACM and Secrets Manager.

Each AWS fact the script relies on is modelled, not assumed: VPCs with the route tables that
make a subnet public (0.0.0.0/0 to an internet gateway) or private with a way out (to a NAT
gateway), Aurora clusters and their members, RDS Proxies and their targets, RDS-managed master
secrets. The script must find the database, plan, apply, and on a second run change nothing.
Its policies go through parliament.
"""

import datetime
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import boto3
import pytest
import yaml
from moto import mock_aws

import localdb
from conftest import ROOT, copy_project, load_script, readme_blocks, readme_lines

REGION = "eu-west-1"
# Not moto's default 123456789012: that is AWS's documentation example, which scripts/bundle
# refuses as a placeholder.
ACCOUNT = "210987654321"
ROLE = "flask-rds-app-ec2"

provision = load_script("provision")
rehearsal = load_script("rehearse-deploy")


# -- the AWS side, as an operator would have it ----------------------------------------------
def public_and_private_vpc(ec2, cidr="10.0"):
    """AWS's "VPC and more" layout: public subnets routed to an internet gateway, private ones
    routed to a NAT gateway, in two zones (https://docs.aws.amazon.com/vpc/latest/userguide/
    nat-gateway-scenarios.html); the database lives in the private ones."""
    vpc = ec2.create_vpc(CidrBlock=f"{cidr}.0.0/16")["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    public = routed_subnets(ec2, vpc, cidr, (0, 1), GatewayId=igw)
    address = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=public[0], AllocationId=address)["NatGateway"]["NatGatewayId"]
    private = routed_subnets(ec2, vpc, cidr, (10, 11), NatGatewayId=nat)
    return {"vpc": vpc, "public": public, "private": private, "nat": nat, "igw": igw}


def routed_subnets(ec2, vpc, cidr, blocks, zones="ab", **target):
    """A subnet in each of two zones, sharing a route table whose 0.0.0.0/0 goes to `target`."""
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", **target)
    subnets = []
    for block, zone in zip(blocks, zones):
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"{cidr}.{block}.0/24",
                                   AvailabilityZone=f"{REGION}{zone}")["Subnet"]["SubnetId"]
        ec2.associate_route_table(RouteTableId=table, SubnetId=subnet)
        subnets.append(subnet)
    return subnets


def default_vpc(ec2):
    """The region's default VPC as AWS makes it: default subnets, an internet gateway, and a
    0.0.0.0/0 route to it in the main route table (https://docs.aws.amazon.com/vpc/latest/
    userguide/default-vpc.html). moto creates the VPC and subnets, not the gateway and route."""
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    main = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                              {"Name": "association.main", "Values": ["true"]}])["RouteTables"][0]
    ec2.create_route(RouteTableId=main["RouteTableId"], DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    return {"vpc": vpc, "public": [s["SubnetId"] for s in subnets], "private": []}


def isolated_vpc(ec2):
    """Subnets whose route tables have only the local route: no way out."""
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"{REGION}{z}")
               ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
    return {"vpc": vpc, "public": [], "private": subnets}


def database_group(aws, network, name):
    group = aws["ec2"].create_security_group(GroupName=f"{name}-sg", Description="database",
                                             VpcId=network["vpc"])["GroupId"]
    subnets = network["private"] or network["public"]
    aws["rds"].create_db_subnet_group(DBSubnetGroupName=f"{name}-subnets", DBSubnetGroupDescription="db",
                                      SubnetIds=subnets)
    return group


def make_instance(aws, network, name, **extra):
    group = database_group(aws, network, name)
    options = {"MasterUserPassword": "master-password-1", "DBName": "ebdb", **extra}
    options = {k: v for k, v in options.items() if v is not None}
    instance = aws["rds"].create_db_instance(
        DBInstanceIdentifier=name, DBInstanceClass="db.t4g.micro", Engine="mysql", MasterUsername="admin",
        AllocatedStorage=20, VpcSecurityGroupIds=[group], DBSubnetGroupName=f"{name}-subnets",
        **options)["DBInstance"]
    return {"group": group, "resource_id": instance["DbiResourceId"], "host": instance["Endpoint"]["Address"],
            "instance": instance}


@functools.cache
def web_tier_policy_only() -> str:
    """moto's AWS managed policies data, as it ships it, with only the web tier's policy left."""
    from moto.iam.aws_managed_policies import aws_managed_policies_data
    return json.dumps({name: policy for name, policy in json.loads(aws_managed_policies_data).items()
                       if f"policy/{name}" == provision.WEB_TIER_POLICY})


@pytest.fixture
def aws(monkeypatch):
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("MOTO_ACCOUNT_ID", ACCOUNT)
    # AWS managed policies (AWSElasticBeanstalkWebTier) exist in a real account; moto loads them on
    # request. It builds all 1,582 it knows for every IAM backend it makes, several per test (about
    # 0.6 s a test on a two-CPU machine); provision attaches only the web tier's, so moto is given
    # that one, as it ships it. Attaching any other would fail as against a policy that is not there.
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    from moto.iam import models as iam_models
    monkeypatch.setattr(iam_models, "aws_managed_policies_data", web_tier_policy_only())
    # moto builds its 5,184 default AMIs for every EC2 backend it makes (about a second a test);
    # nothing here launches an instance.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    # moto 5.2.5 keeps modify_db_cluster's EnableIAMDatabaseAuthentication in an attribute that
    # describe_db_clusters never reads (iam_auth); RDS reports the change. Join the two.
    from moto.rds.models import DBCluster
    monkeypatch.setattr(DBCluster, "enable_iam_database_authentication", property(
        lambda self: self.iam_auth, lambda self, value: setattr(self, "iam_auth", value)), raising=False)
    with mock_aws():
        clients = {name: boto3.client(service, REGION) for name, service in (
            ("ec2", "ec2"), ("rds", "rds"), ("iam", "iam"), ("sm", "secretsmanager"), ("kms", "kms"),
            ("acm", "acm"))}
        network = public_and_private_vpc(clients["ec2"])
        db = make_instance(clients, network, "appdb")
        yield {**clients, **network, "db_group": db["group"], "resource_id": db["resource_id"],
               "host": db["host"]}


def ec2_role(aws, name):
    """A role made for EC2 outside provision, in an instance profile of its name (as the IAM
    console makes it; eb create --instance_profile names the profile)."""
    aws["iam"].create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(provision.EC2_TRUST))
    aws["iam"].create_instance_profile(InstanceProfileName=name)
    aws["iam"].add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)


def run(capsys, *args, target=("--db-instance", "appdb")):
    code = provision.main([*target, "--region", REGION, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def state(aws):
    """Everything provision may touch, for before/after comparisons."""
    groups = aws["ec2"].describe_security_groups()["SecurityGroups"]
    roles = aws["iam"].list_roles()["Roles"]
    return {
        "groups": sorted((g["GroupName"], json.dumps(g["IpPermissions"], sort_keys=True)) for g in groups),
        "policies": {r["RoleName"]: {p: aws["iam"].get_role_policy(RoleName=r["RoleName"], PolicyName=p)
                                     ["PolicyDocument"] for p in aws["iam"].list_role_policies(
                                         RoleName=r["RoleName"])["PolicyNames"]} for r in roles},
        "profiles": sorted(p["InstanceProfileName"] for p in aws["iam"].list_instance_profiles()["InstanceProfiles"]),
        "secrets": sorted(s["Name"] for s in aws["sm"].list_secrets()["SecretList"]),
        "iam_auth": {i["DBInstanceIdentifier"]: i["IAMDatabaseAuthenticationEnabled"]
                     for i in aws["rds"].describe_db_instances()["DBInstances"]},
        "cluster_iam_auth": {c["DBClusterIdentifier"]: c["IAMDatabaseAuthenticationEnabled"]
                             for c in aws["rds"].describe_db_clusters()["DBClusters"]},
    }


def twice(aws, capsys, *args, target=("--db-instance", "appdb")):
    """Apply, then apply again: the second run must find nothing to change."""
    code, first, err = run(capsys, *args, target=target)
    assert code == 0, first + err
    after = state(aws)
    code, second, err = run(capsys, *args, target=target)
    assert code == 0, second + err
    assert "provision: nothing to change" in second and "change     " not in second, second
    assert state(aws) == after
    return first


def policy(aws, name="app-database-access-appdb", role=ROLE):
    return aws["iam"].get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]


def parliament_findings(document: dict) -> str:
    iac = os.environ.get("IAC_VENV", str(ROOT / ".venv-iac"))
    result = subprocess.run([f"{iac}/bin/parliament", "--string", json.dumps(document)],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, result.stderr
    return (result.stdout + result.stderr).strip()


def eb_create(out: str) -> list[str]:
    return shlex.split(re.search(r"^  (eb create ENVIRONMENT .*)$", out, re.MULTILINE)[1])


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


# -- the tests ------------------------------------------------------------------------------
def test_dry_run_plans_and_changes_nothing(aws, capsys, tmp_path):
    before = state(aws)
    code, out, _ = run(capsys, "--auth", "iam", "--create-role", "--dry-run",
                       "--write-options", str(tmp_path / "options.config"))
    assert code == 0
    assert f"{aws['resource_id']}, VPC {aws['vpc']}, security group {aws['db_group']}" in out
    for planned in ("would     create security group appdb-app-instances",
                    f"would     allow tcp/3306 into {aws['db_group']}",
                    "would     enable IAM database authentication on appdb",
                    f"would     create role {ROLE}", f"would     create instance profile {ROLE}"):
        assert planned in out, planned
    assert "dry run: 7 change(s) planned, none made" in out
    assert state(aws) == before
    assert not (tmp_path / "options.config").exists()


def test_private_subnets_with_a_nat_host_the_instances_without_public_addresses(aws, capsys, tmp_path):
    """With --vpc.id and no --vpc.publicip the EB CLI sets AssociatePublicIpAddress=false: right
    for subnets with a NAT route, fatal for subnets without one."""
    options = tmp_path / "02-database-options.config"
    out = twice(aws, capsys, "--auth", "iam", "--create-role", "--write-options", str(options))
    assert "7 change(s) made" in out
    args = eb_create(out)
    assert flag(args, "--vpc.id") == aws["vpc"]
    assert flag(args, "--vpc.ec2subnets").split(",") == aws["private"]
    assert flag(args, "--vpc.elbsubnets").split(",") == aws["public"]
    assert "--vpc.elbpublic" in args and "--vpc.publicip" not in args
    assert flag(args, "--instance_profile") == ROLE
    for subnet in aws["private"]:
        assert re.search(rf"{subnet}  {REGION}[ab]  {aws['nat']}\s+instances$", out, re.MULTILINE), out

    app_group = aws["ec2"].describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["appdb-app-instances"]}])["SecurityGroups"][0]
    rules = aws["ec2"].describe_security_groups(GroupIds=[aws["db_group"]])["SecurityGroups"][0]["IpPermissions"]
    assert len(rules) == 1
    rule = rules[0]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 3306, 3306)
    assert rule["IpRanges"] == [] and rule.get("Ipv6Ranges", []) == []  # no CIDR, never 0.0.0.0/0
    assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [app_group["GroupId"]]
    # moto accepts any text; EC2 refuses characters outside this set (an apostrophe, say).
    assert rehearsal.RULE_DESCRIPTION.fullmatch(rule["UserIdGroupPairs"][0]["Description"])

    trust = aws["iam"].get_role(RoleName=ROLE)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    attached = aws["iam"].list_attached_role_policies(RoleName=ROLE)["AttachedPolicies"]
    assert [p["PolicyName"] for p in attached] == ["AWSElasticBeanstalkWebTier"]  # no WorkerTier, no Docker
    profile = aws["iam"].get_instance_profile(InstanceProfileName=ROLE)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [ROLE]
    document = policy(aws)
    assert document["Statement"] == [{
        "Sid": "ConnectAsTheAppUser", "Effect": "Allow", "Action": "rds-db:connect",
        "Resource": f"arn:aws:rds-db:{REGION}:{ACCOUNT}:dbuser:{aws['resource_id']}/app"}]
    assert parliament_findings(document) == ""
    assert state(aws)["iam_auth"]["appdb"] is True

    assert "IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS' REQUIRE SSL" in out
    assert "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, REFERENCES ON `ebdb`.* TO 'app'@'%'" in out
    assert f"eb setenv DB_AUTH=iam RDS_HOSTNAME={aws['host']} RDS_PORT=3306 RDS_DB_NAME=ebdb RDS_USERNAME=app\n" in out
    written = yaml.safe_load(options.read_text())["option_settings"]
    custom = written["aws:elasticbeanstalk:customoption"]
    assert custom["DatabaseResourceId"] == aws["resource_id"]
    assert custom["DatabaseSecurityGroupId"] == aws["db_group"]
    assert custom["DatabaseSecretArn"] == f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:none"
    assert written["aws:autoscaling:launchconfiguration"]["SecurityGroups"] == app_group["GroupId"]


def test_default_vpc_puts_the_instances_in_public_subnets_with_public_addresses(aws, capsys):
    network = default_vpc(aws["ec2"])
    make_instance(aws, network, "defaultdb")
    out = twice(aws, capsys, "--auth", "iam", "--create-role", target=("--db-instance", "defaultdb"))
    args = eb_create(out)
    assert flag(args, "--vpc.id") == network["vpc"]
    assert "--vpc.publicip" in args and "--vpc.elbpublic" in args
    chosen = flag(args, "--vpc.ec2subnets").split(",")
    assert chosen == flag(args, "--vpc.elbsubnets").split(",")
    assert set(chosen) <= set(network["public"]) and len(chosen) >= 2
    zones = {s["AvailabilityZone"] for s in aws["ec2"].describe_subnets(SubnetIds=chosen)["Subnets"]}
    assert len(zones) == len(chosen)  # one per zone
    assert "no private subnets with a NAT route in two zones" in out


def test_subnets_with_no_way_out_are_refused(aws, capsys):
    network = isolated_vpc(aws["ec2"])
    make_instance(aws, network, "lockeddb")
    before = state(aws)
    code, out, err = run(capsys, "--auth", "iam", "--create-role", target=("--db-instance", "lockeddb"))
    assert code == 2
    assert f"no subnet of {network['vpc']} has a route to the internet" in err
    assert "could not reach Elastic Beanstalk, S3, PyPI or the RDS CA bundle" in err
    assert state(aws) == before  # refused before any change


def test_a_public_subnet_in_one_zone_cannot_host_the_load_balancer(aws, capsys):
    ec2 = aws["ec2"]
    vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.8.{i}.0/24", AvailabilityZone=f"{REGION}{z}")
               ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]
    ec2.associate_route_table(RouteTableId=table, SubnetId=subnets[0])
    make_instance(aws, {"vpc": vpc, "public": [], "private": subnets}, "onezone")
    code, _, err = run(capsys, "--auth", "iam", "--create-role", target=("--db-instance", "onezone"))
    assert code == 2 and "public subnets (a route to an internet gateway) in two Availability Zones" in err


def make_cluster(aws, name="appcluster", **extra):
    group = database_group(aws, {"vpc": aws["vpc"], "private": aws["private"], "public": []}, name)
    cluster = aws["rds"].create_db_cluster(
        DBClusterIdentifier=name, Engine="aurora-mysql", MasterUsername="admin",
        DBSubnetGroupName=f"{name}-subnets", VpcSecurityGroupIds=[group], DatabaseName="ebdb",
        **({"MasterUserPassword": "master-password-1"} | extra))["DBCluster"]
    for i in (1, 2):
        aws["rds"].create_db_instance(DBInstanceIdentifier=f"{name}-{i}", DBClusterIdentifier=name,
                                      Engine="aurora-mysql", DBInstanceClass="db.r6g.large")
    return cluster, group


def test_an_aurora_member_means_its_cluster_writer_endpoint_and_resource_id(aws, capsys):
    """IAM auth is a cluster setting, rds-db:connect names the DbClusterResourceId, and the app
    must use the writer endpoint (https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/
    UsingWithRDS.IAMDBAuth.IAMPolicy.html)."""
    cluster, group = make_cluster(aws)
    assert cluster["IAMDatabaseAuthenticationEnabled"] is False
    member_host = aws["rds"].describe_db_instances(DBInstanceIdentifier="appcluster-1")["DBInstances"][0]
    out = twice(aws, capsys, "--auth", "iam", "--create-role", target=("--db-instance", "appcluster-1"))
    assert "appcluster-1 is a member of Aurora cluster appcluster" in out
    assert "enable IAM database authentication on cluster appcluster" in out
    assert state(aws)["cluster_iam_auth"]["appcluster"] is True
    assert state(aws)["iam_auth"]["appcluster-1"] is False  # never set on the member
    assert cluster["DbClusterResourceId"].startswith("cluster-")
    assert policy(aws, "app-database-access-appcluster")["Statement"][0]["Resource"] == (
        f"arn:aws:rds-db:{REGION}:{ACCOUNT}:dbuser:{cluster['DbClusterResourceId']}/app")
    assert f"RDS_HOSTNAME={cluster['Endpoint']} " in out
    assert (member_host.get("Endpoint") or {}).get("Address", "-") not in out
    assert f"allow tcp/3306 into {group} (the cluster's group)" in out
    # Named directly, the cluster gives the same answer.
    code, direct, _ = run(capsys, "--auth", "iam", target=("--db-cluster", "appcluster"))
    assert code == 0 and "nothing to change" in direct


def make_proxy(aws, iam_auth="REQUIRED"):
    group = aws["ec2"].create_security_group(GroupName="proxy-sg", Description="proxy",
                                             VpcId=aws["vpc"])["GroupId"]
    secret = aws["sm"].create_secret(Name="proxy/app", SecretString=json.dumps(
        {"username": "app", "password": "p"}))["ARN"]
    proxy = aws["rds"].create_db_proxy(
        DBProxyName="app-proxy", EngineFamily="MYSQL", RoleArn=f"arn:aws:iam::{ACCOUNT}:role/proxy",
        Auth=[{"AuthScheme": "SECRETS", "SecretArn": secret, "IAMAuth": iam_auth}],
        VpcSubnetIds=aws["private"], VpcSecurityGroupIds=[group], RequireTLS=True)["DBProxy"]
    aws["rds"].register_db_proxy_targets(DBProxyName="app-proxy", DBInstanceIdentifiers=["appdb"])
    return proxy, group


def test_an_rds_proxy_gets_its_own_resource_id_ingress_and_trust(aws, capsys, tmp_path):
    """Through a proxy, rds-db:connect names the proxy's prx- id, and its ACM certificate needs
    Amazon's roots (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy-connecting.html)."""
    proxy, group = make_proxy(aws)
    prx = proxy["DBProxyArn"].rsplit(":", 1)[1]
    assert prx.startswith("prx-")
    options = tmp_path / "02.config"
    out = twice(aws, capsys, "--auth", "iam", "--create-role", "--write-options", str(options),
                target=("--db-proxy", "app-proxy"))
    assert policy(aws, "app-database-access-app-proxy")["Statement"][0]["Resource"] == f"arn:aws:rds-db:{REGION}:{ACCOUNT}:dbuser:{prx}/app"
    rules = aws["ec2"].describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissions"]
    assert [(r["FromPort"], len(r["UserIdGroupPairs"])) for r in rules] == [(3306, 1)]
    assert f"RDS_HOSTNAME={proxy['Endpoint']} " in out and " DB_SSL_TRUST=rds-proxy" in out
    assert "RDS_DB_NAME=ebdb" in out  # from the proxy's target
    custom = yaml.safe_load(options.read_text())["option_settings"]["aws:elasticbeanstalk:customoption"]
    assert (custom["DatabaseResourceId"], custom["DatabaseSecurityGroupId"]) == (prx, group)
    assert state(aws)["iam_auth"]["appdb"] is False  # the proxy checks the token, not the instance


def test_through_a_proxy_the_database_user_has_the_proxys_password(aws, capsys):
    """With SECRETS authentication IAM covers only the app-to-proxy leg: the proxy logs in to
    the database with the password of its secret (UserAuthConfig, RDS API reference)."""
    proxy, _ = make_proxy(aws)
    code, out, _ = run(capsys, "--auth", "iam", "--create-role", target=("--db-proxy", "app-proxy"))
    assert code == 0
    assert "CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY '<password>' REQUIRE SSL;" in out
    assert "AWSAuthenticationPlugin" not in out
    secret = aws["sm"].describe_secret(SecretId="proxy/app")["ARN"]
    assert f"<password>: the one in the proxy's secret for app (the proxy logs in with it): {secret}" in out
    code, _, err = run(capsys, "--auth", "iam", "--bootstrap-user", target=("--db-proxy", "app-proxy"))
    assert code == 2 and "--bootstrap-user works on the database, not through a proxy" in err


def test_instances_go_only_where_the_load_balancer_has_a_zone(aws, capsys):
    """Private subnets in zones a and b, public ones in b and c: a balancer in b and c sends
    nothing to zone a, so the instances go in the public subnets instead."""
    ec2 = aws["ec2"]
    vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    public = routed_subnets(ec2, vpc, "10.7", (0, 1), zones="bc", GatewayId=igw)
    nat = ec2.create_nat_gateway(SubnetId=public[0], AllocationId=ec2.allocate_address(Domain="vpc")[
        "AllocationId"])["NatGateway"]["NatGatewayId"]
    private = routed_subnets(ec2, vpc, "10.7", (10, 11), zones="ab", NatGatewayId=nat)
    make_instance(aws, {"vpc": vpc, "private": private, "public": public}, "skewdb")
    code, out, _ = run(capsys, "--auth", "iam", "--create-role", "--dry-run", target=("--db-instance", "skewdb"))
    assert code == 0
    args = eb_create(out)
    assert flag(args, "--vpc.ec2subnets").split(",") == public == flag(args, "--vpc.elbsubnets").split(",")
    assert "--vpc.publicip" in args


def test_a_proxy_without_iam_auth_is_refused_for_iam_mode(aws, capsys):
    make_proxy(aws, iam_auth="DISABLED")
    code, _, err = run(capsys, "--auth", "iam", "--create-role", target=("--db-proxy", "app-proxy"))
    assert code == 2 and "does not accept IAM authentication" in err and "IAMAuth REQUIRED" in err


def test_bootstrap_grant_reads_the_managed_master_secret_for_a_limited_time(aws, capsys):
    """ManageMasterUserPassword: RDS keeps the master password in a secret of its own."""
    managed = make_instance(aws, {"vpc": aws["vpc"], "private": aws["private"], "public": []}, "manageddb",
                            ManageMasterUserPassword=True, MasterUserPassword=None)
    master = managed["instance"]["MasterUserSecret"]["SecretArn"]
    target = ("--db-instance", "manageddb")
    out = twice(aws, capsys, "--auth", "iam", "--create-role", "--bootstrap-user", target=target)
    document = policy(aws, "app-database-bootstrap-manageddb")
    assert [(s["Action"], s["Resource"]) for s in document["Statement"]] == [
        ("rds:DescribeDBInstances", managed["instance"]["DBInstanceArn"]),  # to find the secret
        ("secretsmanager:GetSecretValue", master)]
    for statement in document["Statement"]:
        until = datetime.datetime.fromisoformat(statement["Condition"]["DateLessThan"]["aws:CurrentTime"])
        left = until - datetime.datetime.now(datetime.timezone.utc)
        assert datetime.timedelta(hours=3) < left <= datetime.timedelta(hours=4)
    assert parliament_findings(document) == ""
    # The database's ARN, not the secret's: a managed secret's name holds a `!` (rds!db-...).
    assert f"DB_BOOTSTRAP_DB_ARN={managed['instance']['DBInstanceArn']}" in out and "!" not in eb_create(out)[-1]
    assert "run this again without --bootstrap-user" in out

    code, out, _ = run(capsys, "--auth", "iam", target=target)
    assert code == 0 and "remove inline policy app-database-bootstrap-manageddb" in out
    assert aws["iam"].list_role_policies(RoleName=ROLE)["PolicyNames"] == ["app-database-access-manageddb"]
    assert "DB_BOOTSTRAP" not in out


def test_an_expired_bootstrap_grant_is_renewed(aws, capsys):
    make_instance(aws, {"vpc": aws["vpc"], "private": aws["private"], "public": []}, "manageddb",
                  ManageMasterUserPassword=True, MasterUserPassword=None)
    target = ("--db-instance", "manageddb")
    assert run(capsys, "--auth", "iam", "--create-role", "--bootstrap-user", target=target)[0] == 0
    document = policy(aws, "app-database-bootstrap-manageddb")
    document["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"] = "2020-01-01T00:00:00Z"
    aws["iam"].put_role_policy(RoleName=ROLE, PolicyName="app-database-bootstrap-manageddb",
                               PolicyDocument=json.dumps(document))
    code, out, _ = run(capsys, "--auth", "iam", "--bootstrap-user", target=target)
    assert code == 0 and "update inline policy app-database-bootstrap-manageddb" in out


def test_bootstrap_needs_a_managed_master_secret(aws, capsys):
    code, _, err = run(capsys, "--auth", "iam", "--create-role", "--bootstrap-user")
    assert code == 2
    assert "aws rds modify-db-instance --db-instance-identifier appdb --manage-master-user-password" in err


def test_secretsmanager_mode_creates_the_secret_without_printing_it(aws, capsys):
    key = aws["kms"].create_key(Description="app secrets")["KeyMetadata"]["Arn"]
    ec2_role(aws, "app-ec2")
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

    document = policy(aws, role="app-ec2")
    assert [(s["Action"], s["Resource"]) for s in document["Statement"]] == [
        ("secretsmanager:GetSecretValue", secret["ARN"]), ("kms:Decrypt", key)]
    assert document["Statement"][1]["Condition"] == {
        "StringEquals": {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}}
    assert parliament_findings(document) == ""
    assert f"DB_SECRET_ID={secret['ARN']}" in out
    # The secret's username comes with its password: no RDS_USERNAME to contradict it.
    assert "RDS_USERNAME" not in out

    before = state(aws)
    code, out, _ = run(capsys, *args)
    assert code == 0 and "provision: nothing to change" in out
    assert state(aws) == before
    assert json.loads(aws["sm"].get_secret_value(SecretId="appdb/app")["SecretString"]) == value
    # Named without --kms-key-arn, the secret's customer managed key is found.
    code, out, _ = run(capsys, "--auth", "secretsmanager", "--role-name", "app-ec2")
    assert code == 0 and "provision: nothing to change" in out


def test_a_managed_master_secret_as_the_apps_secret_is_flagged(aws, capsys):
    managed = make_instance(aws, {"vpc": aws["vpc"], "private": aws["private"], "public": []}, "manageddb",
                            ManageMasterUserPassword=True, MasterUserPassword=None)
    master = managed["instance"]["MasterUserSecret"]["SecretArn"]
    code, out, _ = run(capsys, "--auth", "secretsmanager", "--secret-id", master, "--create-role",
                       target=("--db-instance", "manageddb"))
    assert code == 0
    assert "is an RDS-managed master user secret: the app would connect as the master user" in out
    assert "RDS_USERNAME" not in out and f"DB_SECRET_ID={master}" in out


def test_password_mode_can_take_rds_password_from_a_secret(aws, capsys, tmp_path):
    """aws:elasticbeanstalk:application:environmentsecrets instead of a plaintext property
    (https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/AWSHowTo.secrets.env-vars.html)."""
    options = tmp_path / "02.config"
    out = twice(aws, capsys, "--auth", "password", "--create-secret", "--create-role",
                "--write-options", str(options))
    arn = aws["sm"].describe_secret(SecretId="appdb/app")["ARN"]
    written = yaml.safe_load(options.read_text())["option_settings"]
    assert written["aws:elasticbeanstalk:application:environmentsecrets"] == {"RDS_PASSWORD": f"{arn}:password"}
    assert written["aws:elasticbeanstalk:customoption"]["DatabaseSecretArn"] == arn
    assert [s["Action"] for s in policy(aws)["Statement"]] == ["secretsmanager:GetSecretValue"]
    assert "RDS_PASSWORD" not in re.search(r"eb setenv .*", out)[0]
    project = copy_project(tmp_path)
    shutil.copy(options, project / ".ebextensions" / "02-database-options.config")
    result = rehearse_static(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"environmentsecrets: RDS_PASSWORD from {arn}:password at instance start" in result.stdout


def test_databases_sharing_a_role_keep_each_others_grants(aws, capsys):
    """The default role serves every database provision is run for: each grant is its own
    inline policy, so a run for one database (here, a switch to password mode) leaves the
    other's alone."""
    make_instance(aws, {"vpc": aws["vpc"], "private": aws["private"], "public": []}, "otherdb")
    assert run(capsys, "--auth", "iam", "--create-role")[0] == 0
    assert run(capsys, "--auth", "iam", target=("--db-instance", "otherdb"))[0] == 0
    assert sorted(aws["iam"].list_role_policies(RoleName=ROLE)["PolicyNames"]) == [
        "app-database-access-appdb", "app-database-access-otherdb"]
    assert run(capsys, "--auth", "password")[0] == 0  # keeps appdb's grant for the version running
    code, out, _ = run(capsys, "--auth", "password", "--drop-previous")
    assert code == 0 and "remove inline policy app-database-access-appdb" in out
    assert aws["iam"].list_role_policies(RoleName=ROLE)["PolicyNames"] == ["app-database-access-otherdb"]
    assert "dbuser:" in json.dumps(policy(aws, "app-database-access-otherdb"))


def test_a_switch_keeps_the_previous_grant_until_drop_previous(aws, capsys):
    """Another --db-user or --auth keeps what the policy granted before, under Sids of its own
    (unique within a policy, letters and digits: https://docs.aws.amazon.com/IAM/latest/
    UserGuide/reference_policies_elements_sid.html); --drop-previous removes only that."""
    assert run(capsys, "--auth", "iam", "--create-role")[0] == 0
    [first] = policy(aws)["Statement"]
    out = twice(aws, capsys, "--auth", "iam", "--db-user", "app2")
    assert f"keeps what it granted before (rds-db:connect on {first['Resource']}) beside the new grant" in out
    second, kept = policy(aws)["Statement"]
    assert second["Resource"].endswith("/app2") and kept == {**first, "Sid": "Previous1ConnectAsTheAppUser"}

    # A mistyped user: the drop would remove the grant the environment may run with now.
    code, _, err = run(capsys, "--auth", "iam", "--db-user", "app3", "--drop-previous")
    assert code == 2 and f"also grants rds-db:connect on {second['Resource']}, which these arguments do not" in err
    assert policy(aws)["Statement"] == [second, kept]

    # A second switch before the drop keeps both earlier grants.
    code, out, _ = run(capsys, "--auth", "password")
    assert code == 0 and "'RDS_PASSWORD=<password>'" in out
    assert policy(aws)["Statement"] == [{**second, "Sid": "Previous1ConnectAsTheAppUser"},
                                        {**first, "Sid": "Previous2ConnectAsTheAppUser"}]
    assert parliament_findings(policy(aws)) == ""
    code, out, _ = run(capsys, "--auth", "password", "--drop-previous")
    assert code == 0 and "remove inline policy app-database-access-appdb" in out
    assert aws["iam"].list_role_policies(RoleName=ROLE)["PolicyNames"] == []


# -- switching credential modes as README "Choosing" says, with 04's policy deployed ----------
ENVIRONMENT = "flask-rds-prod"
# "- to `iam`: `--auth iam --db-user app_iam` (...), then `eb setenv DB_AUTH=iam ...`;"
SWITCH_TO = re.compile(r"^- to `(\w+)`[^`]*: `(--auth [^`]+)`.*?then\s+`(eb setenv [^`]+)`",
                       re.MULTILINE | re.DOTALL)
NONE_ARN = re.compile(r"[:/]none([-/]|$)")  # what 04 names for what the mode does not use


def readme_switching() -> tuple[list[str], dict[str, tuple[str, str]]]:
    """The README's switching steps (iam to secretsmanager), and each mode's arguments and eb setenv."""
    [block] = [b for b in readme_blocks("sh") if "--drop-previous" in b]
    text = (ROOT / "README.md").read_text()
    modes = {m[1]: (m[2], " ".join(m[3].split())) for m in SWITCH_TO.finditer(text)}
    assert sorted(modes) == ["iam", "password", "secretsmanager"]
    return block.strip().splitlines(), modes


def deploy(aws, project, monkeypatch):
    """What `eb deploy` does to the instance role: the environment's stack puts 04's policy as the
    new 02 resolves it (AWS::IAM::Policy "adds or updates an inline policy": https://docs.aws.amazon.com/
    AWSCloudFormation/latest/TemplateReference/aws-resource-iam-policy.html)."""
    for name, value in (("AWS::Region", REGION), ("AWS::AccountId", ACCOUNT),
                        ("AWSEBEnvironmentName", ENVIRONMENT)):
        monkeypatch.setitem(rehearsal.PSEUDO, name, value)
    options, resources, _ = rehearsal.load_ebextensions(project)
    name, resource = resources["DatabaseAccessPolicy"]
    properties = rehearsal.resolve(resource, options["aws:elasticbeanstalk:customoption"], name,
                                   literal_getatt=True)["Properties"]
    aws["iam"].put_role_policy(RoleName=properties["Roles"][0], PolicyName=properties["PolicyName"],
                               PolicyDocument=json.dumps(properties["PolicyDocument"]))


def granted(aws) -> set[tuple[str, str]]:
    """(action, resource) of every Allow on the role's inline policies, but 04's `none` ARNs. A role
    may do what any one of its policies allows (https://docs.aws.amazon.com/IAM/latest/UserGuide/
    reference_policies_evaluation-logic_policy-eval-basics.html); these have no Deny."""
    pairs = set()
    for name in aws["iam"].list_role_policies(RoleName=ROLE)["PolicyNames"]:
        for statement in policy(aws, name)["Statement"]:
            assert statement["Effect"] == "Allow"
            actions, resources = statement["Action"], statement["Resource"]
            pairs |= {(a, r) for a in ([actions] if isinstance(actions, str) else actions)
                      for r in ([resources] if isinstance(resources, str) else resources)
                      if not NONE_ARN.search(r)}
    return pairs


def needs(aws, env: dict[str, str]) -> set[tuple[str, str]]:
    """What the app asks AWS for with these properties: a token for its IAM user (rds-db:connect on
    the dbuser ARN: https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.
    IAMPolicy.html) or its secret; with a password, nothing."""
    if env["DB_AUTH"] == "iam":
        user = f"{aws['resource_id']}/{env['RDS_USERNAME']}"
        return {("rds-db:connect", f"arn:aws:rds-db:{REGION}:{ACCOUNT}:dbuser:{user}")}
    if env["DB_AUTH"] == "secretsmanager":
        return {("secretsmanager:GetSecretValue", env["DB_SECRET_ID"])}
    return set()


def has(aws, wanted: set[tuple[str, str]]) -> bool:
    pairs = granted(aws)
    return all(any(a == action and fnmatch.fnmatchcase(resource, r) for a, r in pairs) for action, resource in wanted)


def walk_switch(aws, capsys, monkeypatch, tmp_path, start: str, to: str) -> None:
    """From an environment deployed in mode `start`, the README's switching steps to mode `to`.
    After each one, the mode the environment runs with is granted, and so is the one `eb setenv`
    back returns to until --drop-previous; at the end, the new mode only."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / ".ebextensions", project / ".ebextensions")
    options = f"{project}/.ebextensions/02-database-options.config"
    args = ("--auth", "iam") if start == "iam" else ("--auth", "secretsmanager", "--create-secret")
    assert run(capsys, *args, "--create-role", "--write-options", options)[0] == 0
    deploy(aws, project, monkeypatch)
    env = ({"DB_AUTH": "iam", "RDS_USERNAME": "app"} if start == "iam" else
           {"DB_AUTH": "secretsmanager", "DB_SECRET_ID": aws["sm"].describe_secret(SecretId="appdb/app")["ARN"]})
    assert has(aws, needs(aws, env)) and needs(aws, env)

    lines, modes = readme_switching()
    example, arguments = modes["secretsmanager"][0], modes[to][0]
    switch, bundle_line, eb_deploy, setenv, drop = lines
    assert example in switch and drop == switch.split(" --write-options")[0] + " --drop-previous"
    assert bundle_line == readme_lines("scripts/bundle")[1] and eb_deploy == "eb deploy"
    assert re.sub(r"DB_SECRET_ID=\S+", "DB_SECRET_ID=<arn>", setenv) == modes["secretsmanager"][1]
    back = dict(env)
    for step in lines:
        if step.startswith(".venv/bin/python scripts/provision"):
            args = shlex.split(step.replace(example, arguments).replace(".ebextensions/", f"{project}/.ebextensions/"))
            code, out, err = run(capsys, *args[2:], target=())
            assert code == 0, out + err
            if step == switch:
                said = out
        elif step == eb_deploy:
            deploy(aws, project, monkeypatch)
        elif step == setenv:
            for pair in shlex.split(setenv if to == "secretsmanager" else modes[to][1])[2:]:
                name, _, value = pair.partition("=")
                if name == "DB_SECRET_ID" and value:  # the ARN provision printed
                    value = aws["sm"].describe_secret(SecretId="appdb/app")["ARN"]
                env = {**{k: v for k, v in env.items() if k != name}, **({name: value} if value else {})}
        assert has(aws, needs(aws, env)), (step, env, granted(aws))
        if step != drop:
            assert has(aws, needs(aws, back)), (step, back, granted(aws))
    assert env["DB_AUTH"] == to and granted(aws) == needs(aws, env)
    assert "keeps what it granted before" in said and "--drop-previous" in said, said


def test_switching_from_iam_to_secretsmanager_as_the_readme_says(aws, capsys, monkeypatch, tmp_path):
    walk_switch(aws, capsys, monkeypatch, tmp_path, "iam", "secretsmanager")


@pytest.mark.parametrize("to", ["iam", "password"])
def test_switching_from_secretsmanager_as_the_readme_says(aws, capsys, monkeypatch, tmp_path, to):
    walk_switch(aws, capsys, monkeypatch, tmp_path, "secretsmanager", to)


def test_https_listener_file_for_an_issued_certificate(aws, capsys, tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    localdb.make_ca(pki, "site", subject="/CN=app.example.com")
    certificate = aws["acm"].import_certificate(Certificate=(pki / "site.pem").read_bytes(),
                                                PrivateKey=(pki / "site.key").read_bytes())["CertificateArn"]
    project = copy_project(tmp_path)
    options = project / ".ebextensions" / "02-database-options.config"
    code, out, err = run(capsys, "--auth", "iam", "--create-role", "--certificate-arn", certificate,
                         "--write-options", str(options))
    assert code == 0, err
    https_path = options.parent / "06-https-listener.config"
    https = yaml.safe_load(https_path.read_text())
    listener = https["option_settings"]["aws:elbv2:listener:443"]
    assert listener["SSLCertificateArns"] == certificate and listener["Protocol"] == "HTTPS"
    redirect = https["Resources"]["AWSEBV2LoadBalancerListener"]["Properties"]["DefaultActions"][0]
    assert redirect["Type"] == "redirect" and redirect["RedirectConfig"]["Protocol"] == "HTTPS"

    # The rehearsal's static checks: cfn-lint (Beanstalk's load balancer stubbed), checkov
    # (CKV_AWS_2 passes on a redirect to HTTPS), and the listener's certificate and policy.
    result = rehearse_static(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cfn-lint: 3 resource(s), no findings" in result.stdout
    assert f"https: port 443 with {certificate} and ELBSecurityPolicy-TLS13-1-2-2021-06" in result.stdout
    https_path.write_text(https_path.read_text().replace("ListenerEnabled: \"true\"", "ListenerEnabled: \"false\""))
    result = rehearse_static(project)
    assert result.returncode == 1 and "port 80 redirects to HTTPS but aws:elbv2:listener:443 is not an enabled" in result.stderr

    code, _, err = run(capsys, "--auth", "iam", "--certificate-arn", certificate.replace("-", "0", 1))
    assert code == 2 and "no ACM certificate" in err


def rehearse_static(project):
    """scripts/rehearse-deploy --static-only on the bundle scripts/bundle builds of `project`."""
    built = bundle(project)
    assert built.returncode == 0, built.stderr
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "rehearse-deploy"), "--static-only",
                           "--bundle", str(project / "dist" / "app.zip")],
                          capture_output=True, text=True, timeout=300)


# What creating each kind of resource in .ebextensions asks of the deploying user: without an
# operations role, Beanstalk's CloudFormation stack acts with the caller's own permissions.
# The load balancer listener (06) is Beanstalk's own, covered by AdministratorAccess-AWSElasticBeanstalk.
CALLER_NEEDS = {
    "AWS::EC2::SecurityGroupIngress": (["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress"],
                                       lambda props, arn: arn("ec2", f"security-group/{props['GroupId']}")),
    "AWS::IAM::Policy": (["iam:GetRolePolicy", "iam:PutRolePolicy", "iam:DeleteRolePolicy"],
                         lambda props, arn: arn("iam", f"role/{props['Roles'][0]}", region=False)),
    "AWS::ElasticLoadBalancingV2::Listener": ([], None),
}


def test_deployer_policy_covers_what_ebextensions_creates(aws, capsys, tmp_path):
    project = copy_project(tmp_path)
    options = project / ".ebextensions" / "02-database-options.config"
    path = tmp_path / "deployer-policy.json"
    code, _, err = run(capsys, "--auth", "iam", "--create-role", "--write-deployer-policy", str(path),
                       "--write-options", str(options))
    assert code == 0, err
    document = json.loads(path.read_text())
    assert parliament_findings(document) == ""
    granted = {(action, s["Resource"]) for s in document["Statement"]
               for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    account = provision.Account(REGION, ACCOUNT, "aws")
    loaded, resources, _ = rehearsal.load_ebextensions(project)
    custom = loaded["aws:elasticbeanstalk:customoption"]
    assert {r["Type"] for _, r in resources.values()} <= set(CALLER_NEEDS), "say what the deployer needs for it"
    needed = set()
    for logical_id, (name, resource) in resources.items():
        actions, resource_arn = CALLER_NEEDS[resource["Type"]]
        props = rehearsal.resolve(resource, custom, name)["Properties"]
        needed |= {(action, resource_arn(props, account.arn)) for action in actions}
    assert needed and needed <= granted, needed - granted
    role = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
    assert ("iam:PassRole", role) in granted  # eb create passes the instance profile's role to EC2
    assert granted - needed == {("iam:PassRole", role)}  # and nothing else


def test_errors_say_what_to_fix(aws, capsys):
    code, _, err = run(capsys, "--auth", "iam")
    assert code == 2
    assert f"IAM role '{ROLE}' not found" in err
    assert "instance PROFILE" in err and "--create-role" in err

    code, _, err = run(capsys, "--auth", "secretsmanager", "--create-role")
    assert code == 2 and "secret 'appdb/app' not found; pass --create-secret" in err

    code = provision.main(["--db-instance", "nope", "--region", REGION])
    err = capsys.readouterr().err
    assert code == 2 and "no RDS instance 'nope' in eu-west-1" in err


def test_instance_without_a_database_gets_create_database_in_the_sql(aws, capsys):
    make_instance(aws, {"vpc": aws["vpc"], "private": aws["private"], "public": []}, "nodb", DBName=None)
    code, out, _ = run(capsys, "--auth", "iam", "--create-role", target=("--db-instance", "nodb"))
    assert code == 0
    assert "nodb has no database yet" in out
    assert "CREATE DATABASE IF NOT EXISTS `ebdb`" in out


def bundle(project, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "bundle"), "--project", str(project), *args],
                          capture_output=True, text=True, timeout=120)


def readme_bundle(project, line):
    """One of the README's scripts/bundle lines, run on `project` instead of this checkout."""
    args = shlex.split(line)
    assert args[:2] == [".venv/bin/python", "scripts/bundle"]
    return bundle(project, *args[2:])


def test_eb_deploys_only_a_bundle_with_provisioned_options(aws, capsys, tmp_path, eb_venv):
    """`eb create`/`eb deploy` upload `deploy: artifact:` when set (ebcli/operations/commonops.py,
    create_app_version): scripts/bundle sets it, and builds nothing from placeholders."""
    # Before eb create, and before each eb deploy (the switching steps' is the same line).
    first, later, *switching = readme_lines("scripts/bundle")
    assert switching == [later]
    project = copy_project(tmp_path)
    refused = readme_bundle(project, later)
    assert refused.returncode == 1
    assert "DatabaseSecurityGroupId=sg-placeholder" in refused.stderr
    assert "scripts/provision --db-instance NAME --write-options .ebextensions/02-database-options.config" in refused.stderr
    assert not (project / "dist" / "app.zip").exists()

    options = project / ".ebextensions" / "02-database-options.config"
    assert run(capsys, "--auth", "iam", "--create-role", "--write-options", str(options))[0] == 0
    eb = str(eb_venv / "bin" / "python")
    init = "from ebcli.core import fileoperations as f; f.create_config_file('flask-rds-app', 'eu-west-1', 'python-3.11')"
    subprocess.run([eb, "-c", init], cwd=project, check=True, timeout=60)  # what `eb init` writes
    built = readme_bundle(project, first)
    assert built.returncode == 0, built.stderr
    read = "from ebcli.core import fileoperations as f; print(f.get_config_setting('deploy', 'artifact'))"
    artifact = subprocess.run([eb, "-c", read], cwd=project, check=True, capture_output=True, text=True).stdout
    assert artifact.strip() == "dist/app.zip" and (project / "dist" / "app.zip").exists()
    assert readme_bundle(project, later).returncode == 0


def test_readme_provision_commands(aws, capsys, tmp_path):
    """The README's provision lines, as written, against the moto account (files go to a temp dir)."""
    # The walkthrough's database has an RDS-managed master password (--bootstrap-user needs one).
    aws["rds"].modify_db_instance(DBInstanceIdentifier="appdb", ManageMasterUserPassword=True,
                                  ApplyImmediately=True)
    # The walkthrough's (the switching steps, with --db-user, are walked by walk_switch).
    lines = [line for line in readme_lines("scripts/provision --db-instance")
             if "--destroy" not in line and "--db-user" not in line]
    assert len(lines) == 3 and lines[0].endswith("--dry-run")
    outputs = []
    for line in lines:
        line = line.replace(".ebextensions/", f"{tmp_path}/").replace("dist/", f"{tmp_path}/")
        args = shlex.split(line)
        assert args[:2] == [".venv/bin/python", "scripts/provision"]
        code, out, err = run(capsys, *args[2:], target=())
        assert code == 0, err
        outputs.append(out)
    assert "8 change(s) planned, none made" in outputs[0]
    assert "8 change(s) made" in outputs[1] and "put inline policy app-database-bootstrap-appdb" in outputs[1]
    options = yaml.safe_load((tmp_path / "02-database-options.config").read_text())
    assert options["option_settings"]["aws:elasticbeanstalk:customoption"]["DatabaseResourceId"] == aws["resource_id"]
    assert json.loads((tmp_path / "deployer-policy.json").read_text())["Statement"]
    # After the first deploy: the bootstrap grant goes, nothing else changes.
    assert "remove inline policy app-database-bootstrap-appdb" in outputs[2] and "1 change(s) made" in outputs[2]


def test_readme_eb_create_lines_match_what_provision_prints(aws, capsys):
    """The README shows one eb create line per subnet layout: each has provision's flags."""
    creates = [shlex.split(line) for line in readme_lines("eb create ")]
    assert len(creates) == 2
    aws["rds"].modify_db_instance(DBInstanceIdentifier="appdb", ManageMasterUserPassword=True,
                                  ApplyImmediately=True)
    code, private_out, _ = run(capsys, "--auth", "iam", "--create-role", "--bootstrap-user", "--dry-run")
    network = default_vpc(aws["ec2"])
    make_instance(aws, network, "defaultdb")
    code, public_out, _ = run(capsys, "--auth", "iam", "--create-role", "--dry-run",
                              target=("--db-instance", "defaultdb"))
    for readme, printed in zip(creates, (eb_create(private_out), eb_create(public_out))):
        assert [a for a in readme if a.startswith("-")] == [a for a in printed if a.startswith("-")]
        assert flag(readme, "--instance_profile") == ROLE


# -- teardown: --destroy deletes what provision created, and nothing else ---------------------
APP = "flask-rds-app"
ENV = "flask-rds-prod"
BUCKET = f"elasticbeanstalk-{REGION}-{ACCOUNT}"


def everything(aws):
    """state() plus what Beanstalk leaves behind, and the database itself."""
    logs, s3, eb = (boto3.client(s, REGION) for s in ("logs", "s3", "elasticbeanstalk"))
    return {**state(aws),
            "roles": sorted(r["RoleName"] for r in aws["iam"].list_roles()["Roles"]),
            "log_groups": sorted(g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]),
            "objects": sorted(o["Key"] for b in s3.list_buckets()["Buckets"]
                              for o in s3.list_objects_v2(Bucket=b["Name"]).get("Contents", [])),
            "applications": sorted(a["ApplicationName"] for a in eb.describe_applications()["Applications"]),
            "databases": sorted(i["DBInstanceIdentifier"] for i in aws["rds"].describe_db_instances()["DBInstances"])}


def beanstalk_leftovers():
    """What `eb terminate` leaves: its environments' log groups (DeleteOnTerminate false in 01),
    the source bundles the EB CLI uploaded under <application>/, and the application."""
    logs, s3, eb = (boto3.client(s, REGION) for s in ("logs", "s3", "elasticbeanstalk"))
    for env in (ENV, "someone-elses-env"):
        for name in ("var/log/web.stdout.log", "var/log/eb-engine.log"):
            logs.create_log_group(logGroupName=f"/aws/elasticbeanstalk/{env}/{name}")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    for key in (f"{APP}/app-v1.zip", f"{APP}/app-v2.zip", "other-app/app-v1.zip"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"PK")
    eb.create_application(ApplicationName=APP)
    eb.create_application(ApplicationName="other-app")


def test_destroy_lists_then_deletes_only_what_provision_created(aws, capsys):
    aws["rds"].modify_db_instance(DBInstanceIdentifier="appdb", ManageMasterUserPassword=True, ApplyImmediately=True)
    code, _, err = run(capsys, "--auth", "secretsmanager", "--create-secret", "--create-role", "--bootstrap-user")
    assert code == 0, err
    # What is not provision's: a group admitted to the database by someone else, a secret and a
    # role of its own, a group with provision's name but without its tag (made by hand).
    other = aws["ec2"].create_security_group(GroupName="bastion", Description="x", VpcId=aws["vpc"])["GroupId"]
    aws["ec2"].authorize_security_group_ingress(GroupId=aws["db_group"], IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 3306, "ToPort": 3306, "UserIdGroupPairs": [{"GroupId": other}]}])
    aws["ec2"].create_security_group(GroupName="appdb-app-instances", Description="x",
                                     VpcId=aws["ec2"].create_vpc(CidrBlock="10.5.0.0/16")["Vpc"]["VpcId"])
    aws["sm"].create_secret(Name="appdb/reporting", SecretString="{}",
                            Tags=[{"Key": provision.TAG_KEY, "Value": "otherdb"}])
    aws["iam"].create_role(RoleName="someone-else", AssumeRolePolicyDocument=json.dumps(provision.EC2_TRUST))
    # A role provision made for another database keeps its policies: they may be that database's.
    make_instance(aws, {"vpc": aws["vpc"], "private": aws["private"], "public": []}, "otherdb")
    assert run(capsys, "--auth", "iam", "--create-role", "--role-name", "other-ec2",
               target=("--db-instance", "otherdb"))[0] == 0
    beanstalk_leftovers()
    ours = aws["sm"].describe_secret(SecretId="appdb/app")["ARN"]
    before = everything(aws)

    lines = readme_lines("--destroy")
    assert [line.endswith("--yes") for line in lines] == [False, True]
    outputs = []
    for line in [*lines, lines[-1]]:  # the last one twice: a second run finds nothing
        args = shlex.split(line)
        assert args[:2] == [".venv/bin/python", "scripts/provision"]
        code, out, err = run(capsys, *args[2:], target=())
        assert code == 0, out + err
        outputs.append(out)
        if len(outputs) == 1:
            assert everything(aws) == before  # the dry run deletes nothing

    dry, done, again = outputs
    planned = [f"revoke tcp/3306 into {aws['db_group']} from appdb-app-instances",
               "delete security group appdb-app-instances",
               f"take role {ROLE} out of instance profile {ROLE}", f"delete instance profile {ROLE}",
               f"remove inline policy app-database-access-appdb from role {ROLE}",
               f"remove inline policy app-database-bootstrap-appdb from role {ROLE}",
               f"detach AWSElasticBeanstalkWebTier from role {ROLE}", f"delete role {ROLE}",
               f"delete secret appdb/app (recoverable for 7 days: aws secretsmanager restore-secret --secret-id {ours})",
               f"delete log group /aws/elasticbeanstalk/{ENV}/var/log/eb-engine.log",
               f"delete log group /aws/elasticbeanstalk/{ENV}/var/log/web.stdout.log",
               f"delete 2 source bundle(s) under s3://{BUCKET}/{APP}/",
               f"delete Elastic Beanstalk application {APP}"]
    for step in planned:
        assert f"  would     {step}" in dry and f"  done      {step}" in done, step
    assert f"dry run: {len(planned)} deletion(s) planned, none made; run again with --yes" in dry
    assert f"provision: {len(planned)} deletion(s) made" in done
    assert "provision: nothing left to delete" in again and "  done " not in again, again
    assert "security group appdb-app-instances" in again and "has provision's name but not its tag" in again
    code, out, _ = run(capsys, "--destroy", "--yes", "--role-name", "other-ec2")
    assert code == 0 and "role other-ec2 was created by scripts/provision for otherdb: kept with its policies" in out
    assert aws["iam"].list_role_policies(RoleName="other-ec2")["PolicyNames"] == ["app-database-access-otherdb"]

    after = everything(aws)
    groups = aws["ec2"].describe_security_groups()["SecurityGroups"]
    # provision's group is gone from the database's VPC; the untagged one of the same name stays.
    assert [g["VpcId"] == aws["vpc"] for g in groups if g["GroupName"] == "appdb-app-instances"] == [False]
    rules = aws["ec2"].describe_security_groups(GroupIds=[aws["db_group"]])["SecurityGroups"][0]["IpPermissions"]
    assert [p["GroupId"] for r in rules for p in r["UserIdGroupPairs"]] == [other]
    assert ROLE not in after["roles"] and "someone-else" in after["roles"] and after["profiles"] == ["other-ec2"]
    assert after["secrets"] == sorted(set(before["secrets"]) - {"appdb/app"})  # the master secret stays
    assert after["log_groups"] == [g for g in before["log_groups"] if "someone-elses-env" in g]
    assert after["objects"] == ["other-app/app-v1.zip"]
    assert after["applications"] == ["other-app"]
    assert after["databases"] == before["databases"]  # never the database: the commands instead
    today = datetime.date.today().strftime("%Y%m%d")
    assert (f"aws rds delete-db-instance --db-instance-identifier appdb --final-db-snapshot-identifier "
            f"appdb-final-{today} --region {REGION}") in done


def test_destroy_waits_for_eb_terminate_and_spares_a_role_it_did_not_create(aws, capsys):
    ec2_role(aws, "app-ec2")
    aws["iam"].put_role_policy(RoleName="app-ec2", PolicyName="their-own", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                 "Resource": "arn:aws:s3:::their-bucket/*"}]}))
    assert run(capsys, "--auth", "iam", "--role-name", "app-ec2")[0] == 0
    group = aws["ec2"].describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["appdb-app-instances"]}])["SecurityGroups"][0]["GroupId"]
    # An instance of the environment still holds the group: nothing is deleted.
    interface = aws["ec2"].create_network_interface(SubnetId=aws["private"][0], Groups=[group])["NetworkInterface"]
    before = state(aws)
    code, out, err = run(capsys, "--destroy", "--role-name", "app-ec2", "--yes")
    assert code == 2 and "still attached to 1 network interface(s)" in err and "eb terminate" in err
    assert state(aws) == before
    aws["ec2"].delete_network_interface(NetworkInterfaceId=interface["NetworkInterfaceId"])
    # A live environment keeps the application's leftovers out of reach too.
    eb = boto3.client("elasticbeanstalk", REGION)
    eb.create_application(ApplicationName=APP)
    eb.create_environment(ApplicationName=APP, EnvironmentName=ENV, SolutionStackName="64bit Amazon Linux 2023")
    code, _, err = run(capsys, "--destroy", "--role-name", "app-ec2", "--application", APP)
    assert code == 2 and f"application {APP} still has environment(s) {ENV} (Ready)" in err

    code, out, err = run(capsys, "--destroy", "--role-name", "app-ec2", "--yes")
    assert code == 0, err
    assert "remove inline policy app-database-access-appdb from role app-ec2" in out
    assert "role app-ec2 was not created by scripts/provision for appdb" in out
    assert aws["iam"].list_role_policies(RoleName="app-ec2")["PolicyNames"] == ["their-own"]
    assert "stays enabled on appdb" in out  # provision turned IAM auth on; destroy says so, leaves it
    # Without --application, the commands for Beanstalk's leftovers.
    assert f"aws logs delete-log-group --log-group-name /aws/elasticbeanstalk/ENVIRONMENT/var/log/web.stdout.log" in out
    assert f"aws elasticbeanstalk delete-application --application-name APPLICATION --region {REGION}" in out

    for args, message in ((("--destroy", "--create-role"), "--destroy does not take --create-role"),
                          (("--yes",), "--yes goes with --destroy")):
        with pytest.raises(SystemExit) as exited:
            run(capsys, *args)
        assert exited.value.code == 2 and message in capsys.readouterr().err


def test_a_secret_destroy_scheduled_for_deletion_is_not_reused(aws, capsys):
    """Secrets Manager keeps a deleted secret, readable by describe_secret, for its recovery
    window: provision must not point the app at it."""
    args = ("--auth", "secretsmanager", "--create-secret", "--create-role")
    assert run(capsys, *args)[0] == 0
    assert run(capsys, "--destroy", "--yes")[0] == 0
    arn = aws["sm"].describe_secret(SecretId="appdb/app")["ARN"]
    code, out, err = run(capsys, *args)
    assert code == 2, out
    assert "secret appdb/app is scheduled for deletion" in err
    assert f"aws secretsmanager restore-secret --secret-id {arn}" in err
    aws["sm"].restore_secret(SecretId=arn)
    assert run(capsys, *args)[0] == 0


def test_destroy_prints_the_delete_commands_for_each_kind_and_works_after_the_database_is_gone(aws, capsys):
    make_cluster(aws)
    code, out, _ = run(capsys, "--destroy", target=("--db-instance", "appcluster-1"))  # a member means its cluster
    assert code == 0
    snapshot = f"appcluster-final-{datetime.date.today():%Y%m%d}"
    assert [line.strip() for line in out.splitlines() if line.startswith("  aws rds")] == [
        f"aws rds delete-db-instance --db-instance-identifier appcluster-{i} --region {REGION}" for i in (1, 2)] + [
        f"aws rds delete-db-cluster --db-cluster-identifier appcluster --final-db-snapshot-identifier {snapshot} "
        f"--region {REGION}"]
    make_proxy(aws)
    code, out, _ = run(capsys, "--destroy", target=("--db-proxy", "app-proxy"))
    assert code == 0 and f"aws rds delete-db-proxy --db-proxy-name app-proxy --region {REGION}" in out

    # The database deleted first: what provision made for it is found by its tag all the same.
    assert run(capsys, "--auth", "iam", "--create-role")[0] == 0
    aws["rds"].delete_db_instance(DBInstanceIdentifier="appdb", SkipFinalSnapshot=True)
    code, out, err = run(capsys, "--destroy", "--yes")
    assert code == 0, err
    assert "no RDS instance 'appdb' in eu-west-1" in out and "looking for what provision created for appdb by its tag" in out
    assert "done      delete security group appdb-app-instances" in out and f"done      delete role {ROLE}" in out
    assert not aws["ec2"].describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["appdb-app-instances"]}])["SecurityGroups"]


AWS_CLI_GLOBAL = {"--region", "--query", "--output", "--profile"}


def aws_cli_problems(line: str) -> list[str]:
    """What is wrong with an `aws <service> <operation> --option …` line, by botocore's service
    model: the AWS CLI names each operation and option after the API's, in kebab case."""
    import botocore.session
    from botocore import xform_name

    args = shlex.split(line.split("   #")[0])
    service, operation, options = args[1], args[2], [a for a in args[3:] if a.startswith("--")]
    if service == "s3":  # the hand-written high-level s3 commands
        return [] if operation in ("rm", "ls", "cp") else [f"aws s3 {operation}"]
    model = botocore.session.get_session().get_service_model(service)
    names = {xform_name(name, "-"): name for name in model.operation_names}
    if operation not in names:
        return [f"aws {service} has no {operation}"]
    members = {xform_name(m, "-") for m in model.operation_model(names[operation]).input_shape.members}
    return [f"aws {service} {operation} has no {o}" for o in options
            if o not in AWS_CLI_GLOBAL and o[2:] not in members and o.removeprefix("--no-") not in members]


def test_the_aws_commands_destroy_prints_exist(aws, capsys):
    make_cluster(aws)
    make_proxy(aws)
    assert run(capsys, "--auth", "secretsmanager", "--create-secret", "--create-role")[0] == 0
    aws["rds"].modify_db_instance(DBInstanceIdentifier="appdb", EnableIAMDatabaseAuthentication=True,
                                  ApplyImmediately=True)
    printed = ""
    for target in (("--db-instance", "appdb"), ("--db-cluster", "appcluster"), ("--db-proxy", "app-proxy")):
        code, out, err = run(capsys, "--destroy", target=target)
        assert code == 0, err
        printed += out
    lines = [m for m in re.findall(r"(aws [a-z0-9-]+ [a-z-]+ [^)\n]*)", printed)]
    operations = {" ".join(line.split()[:3]) for line in lines}
    assert operations >= {"aws rds delete-db-instance", "aws rds delete-db-cluster", "aws rds delete-db-proxy",
                          "aws rds modify-db-instance", "aws secretsmanager restore-secret", "aws logs delete-log-group",
                          "aws logs describe-log-groups", "aws s3 rm", "aws elasticbeanstalk delete-application"}
    for line in lines:
        assert not aws_cli_problems(line), (line, aws_cli_problems(line))
    assert aws_cli_problems("aws rds delete-db-instance --db-instance-identifier x --final-snapshot y") == [
        "aws rds delete-db-instance has no --final-snapshot"]


def test_the_aws_commands_the_readme_quotes_exist():
    text = (ROOT / "README.md").read_text()
    start, end = text.index("## Troubleshooting a first deploy"), text.index("## Benchmark")
    spans = [" ".join(s.split()) for s in re.findall(r"`(aws\s+[a-z0-9-]+\s+[a-z-]+[^`]*)`", text[start:end])]
    assert len(spans) >= 8
    for span in spans:
        assert not aws_cli_problems(span), (span, aws_cli_problems(span))


@pytest.mark.parametrize("extra", [["--auth", "iam", "--dry-run"], ["--destroy"]])
def test_no_aws_credentials_names_how_to_get_them(tmp_path, extra):
    """./scripts/provision in a shell without AWS credentials (no keys, no profile, no instance
    role): it printed botocore's "Unable to locate credentials" and nothing on what to do."""
    env = {"PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path),
           "LANG": "C.UTF-8", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    result = subprocess.run([str(ROOT / "scripts" / "provision"), "--db-instance", "appdb", "--region", REGION,
                             *extra],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr == ("provision: ERROR: no AWS credentials found (no keys in the environment, no "
                             "profile, no instance role): run `aws configure`, or `aws sso login --profile "
                             "NAME` and export AWS_PROFILE=NAME, then run this again\n"), result.stderr


def test_a_certificate_without_write_options_prints_the_https_listener(aws, capsys, tmp_path):
    """--help says --certificate-arn gives HTTPS on the load balancer; without --write-options
    the certificate was checked and then dropped: no 06 file, nothing printed, plain HTTP."""
    pki = tmp_path / "pki"
    pki.mkdir()
    localdb.make_ca(pki, "site", subject="/CN=app.example.com")
    certificate = aws["acm"].import_certificate(Certificate=(pki / "site.pem").read_bytes(),
                                                PrivateKey=(pki / "site.key").read_bytes())["CertificateArn"]
    code, out, err = run(capsys, "--auth", "iam", "--create-role", "--certificate-arn", certificate)
    assert code == 0, err
    assert ("\nHTTPS listener (--write-options .ebextensions/02-database-options.config writes it beside "
            "02 as .ebextensions/06-https-listener.config):\n") in out, out
    printed = out.split("writes it beside 02 as .ebextensions/06-https-listener.config):\n", 1)[1]
    https = yaml.safe_load("\n".join(line[2:] for line in printed.splitlines() if line.startswith("  ")))
    assert https == yaml.safe_load(provision.https_file(certificate))


def test_a_file_it_cannot_write_is_refused_before_any_change(aws, capsys, tmp_path):
    """--write-options under a file (a mistyped path): the AWS changes were made, then
    Path.write_text raised NotADirectoryError as a traceback. Now it is refused first."""
    blocker = tmp_path / "ebextensions"
    blocker.write_text("a file where the folder should be")
    before = state(aws)
    code, out, err = run(capsys, "--auth", "iam", "--create-role", "--write-options", str(blocker / "02.config"))
    assert code == 2, out + err
    assert err == (f"provision: ERROR: cannot write {blocker / '02.config'}: {blocker} is not a directory; "
                   "give --write-options a path in a folder you can write\n"), err
    assert state(aws) == before  # nothing changed
