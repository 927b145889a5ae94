"""scripts/provision against what a first real deployment meets in an account set up by hand.

moto models each AWS fact (NAT gateways and their connectivity type and subnet, interface VPC
endpoints with private DNS and their security groups, roles with or without an instance profile
and a trust policy); each test cites the AWS page that states it. The `aws` fixture and the
helpers are test_provision's: one moto account, no server.
"""

import json

import pytest

from test_provision import (REGION, ROLE, aws, eb_create, flag, make_instance, provision,  # noqa: F401
                            routed_subnets, run, state, twice)


def vpc_with_a_nat(ec2, cidr, **nat):
    """Public subnets routed to an internet gateway, private ones routed to a NAT gateway made with
    `nat` (ConnectivityType, the subnet it sits in): AWS's "VPC and more" layout, or a variant of it."""
    vpc = ec2.create_vpc(CidrBlock=f"{cidr}.0.0/16")["Vpc"]["VpcId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    public = routed_subnets(ec2, vpc, cidr, (0, 1), GatewayId=igw)
    # A subnet of its own, with only the local route, where a misplaced NAT gateway may sit.
    isolated = ec2.create_subnet(VpcId=vpc, CidrBlock=f"{cidr}.20.0/24",
                                 AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    home = isolated if nat.pop("isolated", False) else public[0]
    extra = {} if nat.get("ConnectivityType") == "private" else {
        "AllocationId": ec2.allocate_address(Domain="vpc")["AllocationId"]}
    gateway = ec2.create_nat_gateway(SubnetId=home, **extra, **nat)["NatGateway"]["NatGatewayId"]
    private = routed_subnets(ec2, vpc, cidr, (10, 11), NatGatewayId=gateway)
    return {"vpc": vpc, "public": public, "private": private, "nat": gateway}


def test_a_nat_gateway_that_cannot_reach_the_internet_is_no_way_out(aws, capsys):
    """A route to a NAT gateway is a way out only through a public NAT gateway, available, in a
    public subnet: "Private – Instances in private subnets can connect to other VPCs or your
    on-premises network"; "You create a public NAT gateway in a public subnet"
    (https://docs.aws.amazon.com/vpc/latest/userguide/vpc-nat-gateway.html). A deleted one leaves
    a blackhole route (moto keeps it active: the gateway's state tells). Instances placed behind
    such a gateway without public addresses could reach neither Secrets Manager nor PyPI, and the
    first deployment would fail; provision puts them in the public subnets instead, and says why."""
    ec2 = aws["ec2"]
    cases = {"privatenat": ({"ConnectivityType": "private"}, "a private NAT gateway"),
             "misplacednat": ({"isolated": True}, "has no route to an internet gateway"),
             "deletednat": ({}, "NAT gateway deleted")}
    for index, (name, (nat, why)) in enumerate(cases.items()):
        network = vpc_with_a_nat(ec2, f"10.{30 + index}", **nat)
        if name == "deletednat":
            ec2.delete_nat_gateway(NatGatewayId=network["nat"])
        make_instance(aws, network, name)
        code, out, err = run(capsys, "--auth", "iam", "--create-role", "--dry-run", target=("--db-instance", name))
        assert code == 0, err
        args = eb_create(out)
        assert flag(args, "--vpc.ec2subnets").split(",") == network["public"], (name, out)
        assert "--vpc.publicip" in args, name
        for subnet in network["private"]:
            line = next(line for line in out.splitlines() if line.startswith(f"  {subnet}"))
            assert network["nat"] in line and why in line and "instances" not in line, (name, line)
        assert "a route to a NAT gateway that cannot reach the internet does not count" in out

    # With no public subnet for the instances either, it refuses, naming the gateway.
    vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    home = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.20.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    gateway = ec2.create_nat_gateway(SubnetId=home, ConnectivityType="private")["NatGateway"]["NatGatewayId"]
    private = routed_subnets(ec2, vpc, "10.40", (10, 11), NatGatewayId=gateway)
    make_instance(aws, {"vpc": vpc, "public": [], "private": private}, "nowayout")
    before = state(aws)
    code, _, err = run(capsys, "--auth", "iam", "--create-role", target=("--db-instance", "nowayout"))
    assert code == 2 and f"no subnet of {vpc} has a route to the internet" in err
    assert f"{private[0]} routes to {gateway} (a private NAT gateway" in err
    assert state(aws) == before


def test_a_vpc_without_dns_resolution_is_refused_unless_it_has_its_own_dns_servers(aws, capsys):
    """With enableDnsSupport off, the Amazon-provided DNS server does not answer the VPC's
    instances (https://docs.aws.amazon.com/vpc/latest/userguide/vpc-dns.html): neither the
    database's endpoint nor any AWS or PyPI name resolves. Unless DHCP options name DNS
    servers of the VPC's own, provision refuses before changing anything, with the command that
    turns it on; it went on, and the first deployment would have failed."""
    ec2 = aws["ec2"]
    network = vpc_with_a_nat(ec2, "10.50")
    make_instance(aws, network, "nodns")
    ec2.modify_vpc_attribute(VpcId=network["vpc"], EnableDnsSupport={"Value": False})
    before = state(aws)
    code, _, err = run(capsys, "--auth", "iam", "--create-role", target=("--db-instance", "nodns"))
    assert code == 2, err
    assert f"{network['vpc']} has DNS resolution turned off" in err
    assert f"aws ec2 modify-vpc-attribute --vpc-id {network['vpc']} --enable-dns-support Value=true" in err
    assert state(aws) == before

    options = ec2.create_dhcp_options(DhcpConfigurations=[
        {"Key": "domain-name-servers", "Values": ["10.50.0.53", "10.50.1.53"]}])["DhcpOptions"]["DhcpOptionsId"]
    ec2.associate_dhcp_options(DhcpOptionsId=options, VpcId=network["vpc"])
    code, out, err = run(capsys, "--auth", "iam", "--create-role", "--dry-run", target=("--db-instance", "nodns"))
    assert code == 0 and "DNS resolution" not in err + out, err


def ec2_role(iam, name, service="ec2.amazonaws.com"):
    """A role as `aws iam create-role` makes it: no instance profile."""
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": service},
                                                    "Action": "sts:AssumeRole"}]}
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))


def test_the_role_must_reach_the_instances_through_an_instance_profile(aws, capsys):
    """`eb create --instance_profile` names an instance profile; a role made with the CLI or API has
    none ("If you manage your roles from the AWS CLI or the AWS API, you create roles and instance
    profiles as separate actions": https://docs.aws.amazon.com/IAM/latest/UserGuide/
    id_roles_use_switch-role-ec2_instance-profiles.html), and EC2 gives an instance a role only
    when its trust policy lets ec2.amazonaws.com assume it."""
    iam = aws["iam"]
    ec2_role(iam, "cli-made")
    before = state(aws)
    code, _, err = run(capsys, "--auth", "iam", "--role-name", "cli-made")
    assert code == 2 and "IAM role 'cli-made' is in no instance profile" in err
    assert "aws iam create-instance-profile --instance-profile-name cli-made" in err
    assert state(aws) == before  # refused before any change
    # --create-role adds the profile to the role it finds, and leaves the role as it is.
    out = twice(aws, capsys, "--auth", "iam", "--create-role", "--role-name", "cli-made")
    assert "create instance profile cli-made" in out and "create role" not in out
    assert [r["RoleName"] for r in iam.get_instance_profile(InstanceProfileName="cli-made")
            ["InstanceProfile"]["Roles"]] == ["cli-made"]
    assert iam.list_attached_role_policies(RoleName="cli-made")["AttachedPolicies"] == []
    assert flag(eb_create(out), "--instance_profile") == "cli-made"

    # A profile of another name holding the role is the one eb create must name.
    ec2_role(iam, "console-role")
    iam.create_instance_profile(InstanceProfileName="web-profile")
    iam.add_role_to_instance_profile(InstanceProfileName="web-profile", RoleName="console-role")
    code, out, err = run(capsys, "--auth", "iam", "--role-name", "console-role")
    assert code == 0, err
    assert "ok        instance profile web-profile holds role console-role" in out
    assert flag(eb_create(out), "--instance_profile") == "web-profile"

    # A profile of the role's name that holds another role gives the instances that one.
    ec2_role(iam, "squatted")
    iam.create_instance_profile(InstanceProfileName="squatted")
    iam.add_role_to_instance_profile(InstanceProfileName="squatted", RoleName="console-role")
    code, _, err = run(capsys, "--auth", "iam", "--create-role", "--role-name", "squatted")
    assert code == 2 and "instance profile squatted holds role console-role, not squatted" in err

    # A role for another service: the instances would get no credentials at all.
    ec2_role(iam, "lambda-role", service="lambda.amazonaws.com")
    code, _, err = run(capsys, "--auth", "iam", "--create-role", "--role-name", "lambda-role")
    assert code == 2 and "IAM role 'lambda-role' does not let EC2 assume it" in err


def secretsmanager_endpoint(aws, group, private_dns=True):
    return aws["ec2"].create_vpc_endpoint(
        VpcId=aws["vpc"], ServiceName=f"com.amazonaws.{REGION}.secretsmanager", VpcEndpointType="Interface",
        SubnetIds=aws["private"], SecurityGroupIds=[group], PrivateDnsEnabled=private_dns)["VpcEndpoint"]


def test_an_interface_endpoint_that_turns_the_instances_away_gets_a_rule_from_them(aws, capsys):
    """With private DNS, secretsmanager.<region>.amazonaws.com resolves to the interface
    endpoint's addresses for the whole VPC, NAT gateway or not, and the endpoint's security groups
    decide who gets in on 443 (https://docs.aws.amazon.com/vpc/latest/privatelink/
    create-interface-endpoint.html, "Security groups"). A group made for the endpoint with no rule
    for the instances lets the app's GetSecretValue time out on every instance."""
    ec2 = aws["ec2"]
    closed = ec2.create_security_group(GroupName="endpoints", Description="x", VpcId=aws["vpc"])["GroupId"]
    endpoint = secretsmanager_endpoint(aws, closed)
    out = twice(aws, capsys, "--auth", "secretsmanager", "--create-secret", "--create-role")
    assert (f"allow tcp/443 into {closed} (the secretsmanager endpoint {endpoint['VpcEndpointId']}, private DNS"
            in out), out
    app_group = ec2.describe_security_groups(Filters=[
        {"Name": "group-name", "Values": ["appdb-app-instances"]}])["SecurityGroups"][0]["GroupId"]
    rules = ec2.describe_security_groups(GroupIds=[closed])["SecurityGroups"][0]["IpPermissions"]
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"], [p["GroupId"] for p in r["UserIdGroupPairs"]])
            for r in rules] == [("tcp", 443, 443, [app_group])]

    # --destroy takes that rule away with the group, as it does the database's.
    code, out, err = run(capsys, "--destroy", "--yes")
    assert code == 0, err
    assert f"revoke tcp/443 into {closed} from appdb-app-instances" in out
    assert ec2.describe_security_groups(GroupIds=[closed])["SecurityGroups"][0]["IpPermissions"] == []

    # An endpoint group that admits the VPC's addresses on 443 (the usual setup), and an endpoint
    # without private DNS (nothing resolves to it unless asked by name), need nothing.
    ec2.authorize_security_group_ingress(GroupId=closed, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}])
    quiet = ec2.create_security_group(GroupName="quiet", Description="x", VpcId=aws["vpc"])["GroupId"]
    secretsmanager_endpoint(aws, quiet, private_dns=False)
    code, out, err = run(capsys, "--auth", "iam", "--create-role", "--dry-run")
    assert code == 0, err
    assert f"ok        the secretsmanager endpoint {endpoint['VpcEndpointId']} admits the instances on tcp/443" in out
    assert "tcp/443 into" not in out


def test_instances_without_beanstalks_security_group(tmp_path):
    """DisableDefaultEC2SecurityGroup (aws:autoscaling:launchconfiguration, a config-file option on
    https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/using-features.managing.ec2.namespace.html):
    true and Beanstalk creates no AWSEBSecurityGroup, "Therefore, you must provide other security
    groups with the SecurityGroups option" (using-features.managing.ec2.aws-cli.html). The
    rehearsal refused the documented option as unknown; and 03's ingress rule, whose source is
    AWSEBSecurityGroup, would fail the environment's stack. A single-instance environment has no
    AWSEBV2LoadBalancer for the HTTPS listener file to attach to
    (customize-containers-format-resources-eb.html)."""
    import yaml

    import eb_options
    from test_provision import ROOT, rehearsal

    launch = "aws:autoscaling:launchconfiguration"
    disabled = ("09", launch, "DisableDefaultEC2SecurityGroup", "true")
    [problem] = eb_options.check([disabled], ROOT, None)
    assert problem.startswith(f"09: {launch} DisableDefaultEC2SecurityGroup true leaves the instances without "
                              "Beanstalk's security group, and no file sets"), problem
    assert eb_options.check([disabled, ("02", launch, "SecurityGroups", "sg-0123456789abcdef0")], ROOT, None) == []

    options, resources, _ = rehearsal.load_ebextensions(ROOT)
    options[launch] = {**options.get(launch, {}), "DisableDefaultEC2SecurityGroup": "true",
                       "SecurityGroups": "sg-0123456789abcdef0"}
    with pytest.raises(rehearsal.RehearsalError) as refused:  # before any linter runs
        rehearsal.lint_resources(options, resources, tmp_path, tmp_path / "no-linters")
    message = str(refused.value)
    assert message.startswith(".ebextensions/03-database-ingress.config: DatabaseIngressFromInstances refers to "
                              "AWSEBSecurityGroup, which Beanstalk does not create when"), message

    https = yaml.safe_load(provision.https_file("arn:aws:acm:eu-west-1:210987654321:certificate/x"))
    single = {"aws:elasticbeanstalk:environment": {"EnvironmentType": "SingleInstance"}}
    with pytest.raises(rehearsal.RehearsalError) as refused:
        rehearsal.lint_resources(single, {k: ("06", v) for k, v in https["Resources"].items()},
                                 tmp_path, tmp_path / "no-linters")
    message = str(refused.value)
    assert message.startswith("06: AWSEBV2LoadBalancerListener refers to AWSEBV2LoadBalancer"), message
    assert "EnvironmentType is SingleInstance" in message
