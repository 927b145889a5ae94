"""Elastic Beanstalk's option settings as AWS documents them, for scripts/rehearse-deploy.

Beanstalk takes `option_settings` from .ebextensions when it creates or updates the
environment; a misspelt option name, or a value out of range, fails `eb create` or is
silently ignored, and nothing before a real deployment would say so. The table below models
the namespaces this project sets, and those a user of it is likely to add, with each option's
valid values as the page named with the namespace gives them. Nothing here goes beyond those
pages: a namespace that is documented but not modelled is accepted with its options unchecked
(`UNMODELLED`), and a value the page gives no rule for is accepted as text.

`check(settings, staging, procfile_target)` returns the problems, each naming the file, the
namespace, the option and the fix.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DG = "https://docs.aws.amazon.com/elasticbeanstalk/latest/dg/"
GENERAL = DG + "command-options-general.html"
PYTHON = DG + "create-deploy-python-container.html#python-namespaces"
PYTHON_SPECIFIC = DG + "command-options-specific.html#command-options-python"
SOFTWARE_SETTINGS = DG + "environments-cfg-softwaresettings.html"
PROXY = DG + "platforms-linux-extend.proxy.html"
PROCFILE = DG + "python-configuration-procfile.html"
CUSTOM_OPTIONS = DG + "configuration-options-custom.html"
ENVIRONMENT_SECRETS = DG + "AWSHowTo.secrets.env-vars.html"
# The ALB target group's matcher: codes and ranges of codes (Beanstalk's MatcherHTTPCode feeds it).
ELB_MATCHER = "https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_Matcher.html"
# The target group's health check settings, which a process's options become: timeout 2 to 120 s,
# interval 5 to 300 s, thresholds 2 to 10.
TARGET_GROUP_HEALTH = ("https://docs.aws.amazon.com/elasticloadbalancing/latest/application/"
                       "target-group-health-checks.html")
# Elastic Load Balancing's health check: "This value [Timeout] must be less than the Interval
# value". The target group guide gives no such sentence, but CreateTargetGroup enforces the same
# rule ("Health check interval must be greater than the timeout", ValidationError, quoted in
# aws/aws-cdk#3703 and hashicorp/terraform-provider-aws#2366).
ELB_HEALTH_CHECK = "https://docs.aws.amazon.com/elasticloadbalancing/2012-06-01/APIReference/API_HealthCheck.html"
# The rolling update policy Beanstalk's aws:autoscaling:updatepolicy:rollingupdate options set on
# the environment's Auto Scaling group: MinInstancesInService "must be less than the MaxSize of
# the Auto Scaling group".
# The instances' security groups: DisableDefaultEC2SecurityGroup true and Beanstalk creates no
# AWSEBSecurityGroup, "Therefore, you must provide other security groups with the SecurityGroups
# option" (EC2_SECURITY_GROUPS); the option appears in a config file on EC2_NAMESPACE.
EC2_SECURITY_GROUPS = DG + "using-features.managing.ec2.aws-cli.html"
EC2_NAMESPACE = DG + "using-features.managing.ec2.namespace.html"
# The resources of every environment's stack, and those only a load-balanced environment has
# (AWSEBV2LoadBalancer and its listener, rules and target group).
STACK_RESOURCES = DG + "customize-containers-format-resources-eb.html"
UPDATE_POLICY = ("https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-attribute-updatepolicy.html"
                 "#cfn-attributes-updatepolicy-rollingupdate-mininstancesinservice")

ENVIRONMENT = "aws:elasticbeanstalk:application:environment"
PYTHON_CONTAINER = "aws:elasticbeanstalk:container:python"
BALANCER_TYPE = ("aws:elasticbeanstalk:environment", "LoadBalancerType")


@dataclass(frozen=True)
class Values:
    """What an option accepts: `describe` reads after "must be"; `accepts(value, balancer)`."""
    describe: str
    accepts: Callable[[str, str], bool]


def _integer(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text.strip()) else None


def integer(low: int, high: int) -> Values:
    def accepts(value: str, _balancer: str) -> bool:
        number = _integer(value)
        return number is not None and low <= number <= high
    return Values(f"a whole number from {low} to {high}", accepts)


def one_of(*choices: str, ignore_case: bool = False) -> Values:
    def accepts(value: str, _balancer: str) -> bool:
        return value.lower() in {c.lower() for c in choices} if ignore_case else value in choices
    return Values("one of " + ", ".join(choices), accepts)


# YAML's true and false reach Beanstalk as booleans; the pages write them `true` and `false`.
BOOLEAN = one_of("true", "false", ignore_case=True)
TEXT = Values("text", lambda value, balancer: True)
COUNT = Values("a whole number, 1 or more", lambda value, balancer: (_integer(value) or 0) >= 1)
RETENTION_DAYS = one_of(*"1 3 5 7 14 30 60 90 120 150 180 365 400 545 731 1827 3653".split())


def _by_balancer(application: Values, network: Values) -> Values:
    """Options whose range depends on the load balancer type (classic follows application)."""
    return Values(f"{application.describe} (with a network load balancer: {network.describe})",
                  lambda value, balancer: (network if balancer == "network" else application).accepts(value, balancer))


def _codes(low: int, high: int) -> Values:
    """A comma-separated list of HTTP codes (GENERAL) or ranges of codes (ELB_MATCHER), within low..high."""
    def accepts(value: str, _balancer: str) -> bool:
        for part in value.split(","):
            bounds = part.strip().split("-")
            if len(bounds) > 2 or any(_integer(b) is None or not low <= int(b) <= high for b in bounds):
                return False
            if len(bounds) == 2 and int(bounds[0]) > int(bounds[1]):
                return False
        return True
    return Values(f"HTTP codes from {low} to {high}, comma-separated (ranges like 200-299 too)", accepts)


def duration_seconds(text: str) -> int | None:
    """An ISO 8601 duration in Beanstalk's form PT#H#M#S, in seconds; None for anything else."""
    match = re.fullmatch(r"PT(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", text.strip())
    if not match:
        return None
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def iso_duration(low: str, high: str) -> Values:
    """PauseTime and Timeout: PT#H#M#S within the range the page gives (GENERAL, rolling updates)."""
    def accepts(value: str, _balancer: str) -> bool:
        seconds = duration_seconds(value)
        return seconds is not None and duration_seconds(low) <= seconds <= duration_seconds(high)
    return Values(f"an ISO 8601 duration such as PT5M or PT1H30M, from {low} to {high}", accepts)


# "A routable path" (GENERAL), default `/`: an absolute path with no spaces, the form a request's
# path takes (RFC 9112 origin-form), like the ALB's ping path (default `/`) and Application
# Healthcheck URL ("a path starting with /").
HEALTH_CHECK_PATH = Values("an absolute path (starting with /, no spaces), such as /health",
                           lambda value, balancer: value.startswith("/") and not re.search(r"\s", value))


@dataclass(frozen=True)
class Namespace:
    doc: str
    options: dict[str, Values] = field(default_factory=dict)
    any_name: bool = False  # the option names are the user's (environment properties, custom options)


def _process() -> Namespace:
    return Namespace(GENERAL + "#command-options-general-environmentprocess", {
        "DeregistrationDelay": integer(0, 3600),
        "HealthCheckInterval": _by_balancer(integer(5, 300), one_of("10", "30")),
        "HealthCheckPath": HEALTH_CHECK_PATH,
        # Beanstalk's page says 1 to 60; the target group it configures refuses 1 (2 to 120).
        "HealthCheckTimeout": Values(f"a whole number from 2 to 60 (Beanstalk takes 1 to 60, the target "
                                     f"group 2 to 120: {TARGET_GROUP_HEALTH})", integer(2, 60).accepts),
        "HealthyThresholdCount": integer(2, 10),
        "MatcherHTTPCode": _by_balancer(_codes(200, 499), _codes(200, 399)),
        "Port": integer(1, 65535),
        "Protocol": one_of("HTTP", "HTTPS", "TCP"),
        "StickinessEnabled": BOOLEAN,
        "StickinessLBCookieDuration": integer(1, 604800),
        "StickinessType": one_of("lb_cookie"),
        "UnhealthyThresholdCount": integer(2, 10),
    })


def _listener() -> Namespace:
    return Namespace(GENERAL + "#command-options-general-elbv2-listener", {
        "DefaultProcess": TEXT, "ListenerEnabled": BOOLEAN, "Protocol": one_of("HTTP", "HTTPS", "TCP"),
        "Rules": TEXT, "SSLCertificateArns": TEXT, "SSLPolicy": TEXT,
    })


# Namespaces, by exact name or by a pattern for the ones with a name of the user's
# (process_name, listener_port, rule_name).
NAMESPACES: dict[str, Namespace] = {
    "aws:autoscaling:asg": Namespace(GENERAL + "#command-options-general-autoscalingasg", {
        "Availability Zones": one_of("Any", "Any 1", "Any 2", "Any 3"),
        "Cooldown": integer(0, 10000),
        "Custom Availability Zones": TEXT,
        "EnableCapacityRebalancing": BOOLEAN,
        "MinSize": integer(1, 10000),
        "MaxSize": integer(1, 10000),
    }),
    "aws:autoscaling:launchconfiguration": Namespace(GENERAL + "#command-options-general-autoscalinglaunchconfiguration", {
        "DisableDefaultEC2SecurityGroup": BOOLEAN,
        "DisableIMDSv1": BOOLEAN,
        "EC2KeyName": TEXT,
        "IamInstanceProfile": TEXT,
        "ImageId": TEXT,
        "InstanceType": TEXT,
        "MonitoringInterval": one_of("1 minute", "5 minute"),
        "SecurityGroups": TEXT,
        "SSHSourceRestriction": TEXT,
        "BlockDeviceMappings": TEXT,
        "RootVolumeType": one_of("standard", "gp2", "gp3", "io1"),
        "RootVolumeSize": integer(8, 16384),
        "RootVolumeIOPS": integer(100, 20000),
        "RootVolumeThroughput": integer(125, 1000),
    }),
    "aws:autoscaling:trigger": Namespace(GENERAL + "#command-options-general-autoscalingtrigger", {
        "BreachDuration": integer(1, 600),
        "LowerBreachScaleIncrement": TEXT,
        "LowerThreshold": integer(0, 20000000),
        "MeasureName": one_of("CPUUtilization", "NetworkIn", "NetworkOut", "DiskWriteOps", "DiskReadBytes",
                              "DiskReadOps", "DiskWriteBytes", "Latency", "RequestCount", "HealthyHostCount",
                              "UnhealthyHostCount", "TargetResponseTime"),
        "Period": integer(1, 600),
        "EvaluationPeriods": integer(1, 600),
        "Statistic": one_of("Minimum", "Maximum", "Sum", "Average"),
        "Unit": one_of("Seconds", "Percent", "Bytes", "Bits", "Count", "Bytes/Second", "Bits/Second",
                       "Count/Second", "None"),
        "UpperBreachScaleIncrement": TEXT,
        "UpperThreshold": integer(0, 20000000),
    }),
    "aws:autoscaling:updatepolicy:rollingupdate": Namespace(
        GENERAL + "#command-options-general-autoscalingupdatepolicyrollingupdate", {
            "MaxBatchSize": integer(1, 10000),
            "MinInstancesInService": integer(0, 9999),
            "RollingUpdateEnabled": BOOLEAN,
            "RollingUpdateType": one_of("Time", "Health", "Immutable"),
            "PauseTime": iso_duration("PT0S", "PT1H"),
            "Timeout": iso_duration("PT5M", "PT1H"),
        }),
    "aws:ec2:instances": Namespace(GENERAL + "#command-options-general-ec2instances", {
        "EnableSpot": BOOLEAN,
        "InstanceTypes": TEXT,
        "SpotFleetOnDemandBase": integer(0, 10000),
        "SpotFleetOnDemandAboveBasePercentage": integer(0, 100),
        "SpotMaxPrice": TEXT,
        "SupportedArchitectures": TEXT,
    }),
    "aws:ec2:vpc": Namespace(GENERAL + "#command-options-general-ec2vpc", {
        "VPCId": TEXT, "Subnets": TEXT, "ELBSubnets": TEXT, "ELBScheme": one_of("public", "internal"),
        "DBSubnets": TEXT, "AssociatePublicIpAddress": BOOLEAN,
    }),
    "aws:elasticbeanstalk:application": Namespace(GENERAL + "#command-options-general-elasticbeanstalkapplication", {
        "Application Healthcheck URL": TEXT,
    }),
    ENVIRONMENT: Namespace(GENERAL + "#command-options-general-elasticbeanstalkapplicationenvironment", any_name=True),
    "aws:elasticbeanstalk:application:environmentsecrets": Namespace(ENVIRONMENT_SECRETS, any_name=True),
    "aws:elasticbeanstalk:cloudwatch:logs": Namespace(GENERAL + "#command-options-general-cloudwatchlogs", {
        "StreamLogs": BOOLEAN, "DeleteOnTerminate": BOOLEAN, "RetentionInDays": RETENTION_DAYS,
    }),
    "aws:elasticbeanstalk:cloudwatch:logs:health": Namespace(GENERAL + "#command-options-general-cloudwatchlogs-health", {
        "HealthStreamingEnabled": BOOLEAN, "DeleteOnTerminate": BOOLEAN, "RetentionInDays": RETENTION_DAYS,
    }),
    "aws:elasticbeanstalk:command": Namespace(GENERAL + "#command-options-general-elasticbeanstalkcommand", {
        "DeploymentPolicy": one_of("AllAtOnce", "Rolling", "RollingWithAdditionalBatch", "Immutable",
                                   "TrafficSplitting"),
        "Timeout": integer(1, 3600),
        "BatchSizeType": one_of("Percentage", "Fixed"),
        "BatchSize": integer(1, 10000),
        "IgnoreHealthCheck": BOOLEAN,
    }),
    "aws:elasticbeanstalk:customoption": Namespace(CUSTOM_OPTIONS, any_name=True),
    "aws:elasticbeanstalk:environment": Namespace(GENERAL + "#command-options-general-elasticbeanstalkenvironment", {
        "EnvironmentType": one_of("SingleInstance", "LoadBalanced"),
        "ServiceRole": TEXT,
        "LoadBalancerType": one_of("classic", "application", "network"),
        "LoadBalancerIsShared": BOOLEAN,
    }),
    "aws:elasticbeanstalk:environment:proxy": Namespace(PYTHON_SPECIFIC, {
        "ProxyServer": one_of("nginx", "apache"),
    }),
    # Option names are URL paths, values folders of the bundle: checked in _static_files.
    "aws:elasticbeanstalk:environment:proxy:staticfiles": Namespace(
        GENERAL + "#command-options-general-environmentproxystaticfiles", any_name=True),
    "aws:elasticbeanstalk:healthreporting:system": Namespace(GENERAL + "#command-options-general-elasticbeanstalkhealthreporting", {
        "SystemType": one_of("basic", "enhanced"),
        "ConfigDocument": TEXT,
        "EnhancedHealthAuthEnabled": BOOLEAN,
        "HealthCheckSuccessThreshold": one_of("Ok", "Warning", "Degraded", "Severe"),
    }),
    "aws:elasticbeanstalk:hostmanager": Namespace(GENERAL + "#command-options-general-elasticbeanstalkhostmanager", {
        "LogPublicationControl": BOOLEAN,
    }),
    "aws:elasticbeanstalk:managedactions": Namespace(GENERAL + "#command-options-general-elasticbeanstalkmanagedactions", {
        "ManagedActionsEnabled": BOOLEAN, "PreferredStartTime": TEXT, "ServiceRoleForManagedUpdates": TEXT,
    }),
    "aws:elasticbeanstalk:managedactions:platformupdate": Namespace(
        GENERAL + "#command-options-general-elasticbeanstalkmanagedactionsplatformupdate", {
            "UpdateLevel": one_of("patch", "minor"), "InstanceRefreshEnabled": BOOLEAN,
        }),
    "aws:elasticbeanstalk:sns:topics": Namespace(GENERAL + "#command-options-general-elasticbeanstalksnstopics", {
        "Notification Endpoint": TEXT,
        "Notification Protocol": one_of("http", "https", "email", "email-json", "sqs"),
        "Notification Topic ARN": TEXT,
        "Notification Topic Name": TEXT,
    }),
    "aws:elasticbeanstalk:trafficsplitting": Namespace(GENERAL + "#command-options-general-elasticbeanstalktrafficsplitting", {
        "NewVersionPercent": integer(1, 100), "EvaluationTime": integer(3, 600),
    }),
    "aws:elasticbeanstalk:xray": Namespace(GENERAL + "#command-options-general-elasticbeanstalkxray", {
        "XRayEnabled": BOOLEAN,
    }),
    # WSGIPath is checked against the bundle in _python_container.
    PYTHON_CONTAINER: Namespace(PYTHON_SPECIFIC, {"WSGIPath": TEXT, "NumProcesses": COUNT, "NumThreads": COUNT}),
    "aws:elbv2:loadbalancer": Namespace(GENERAL + "#command-options-general-elbv2", {
        "AccessLogsS3Bucket": TEXT, "AccessLogsS3Enabled": BOOLEAN, "AccessLogsS3Prefix": TEXT,
        "IdleTimeout": integer(1, 3600), "ManagedSecurityGroup": TEXT, "SecurityGroups": TEXT,
        "SharedLoadBalancer": TEXT,
    }),
    "aws:elbv2:listener:default": _listener(),
}
PATTERNS: dict[re.Pattern, Namespace] = {
    re.compile(r"aws:elasticbeanstalk:environment:process:[A-Za-z0-9_-]+"): _process(),
    re.compile(r"aws:elbv2:listener:\d+"): _listener(),
    re.compile(r"aws:elbv2:listenerrule:[A-Za-z0-9_-]+"): Namespace(GENERAL + "#command-options-general-elbv2-listenerrule", {
        "HostHeaders": TEXT, "PathPatterns": TEXT, "Priority": integer(1, 1000), "Process": TEXT,
    }),
}
# Documented (GENERAL), options not modelled here: accepted as they are.
UNMODELLED = [re.compile(p) for p in (
    r"aws:autoscaling:scheduledaction",
    r"aws:elasticbeanstalk:(monitoring|sqsd)",
    r"aws:elb:(healthcheck|loadbalancer|listener|listener:\d+|policies|policies:[A-Za-z0-9_-]+)",
    r"aws:rds:dbinstance",
    r"aws:cloudformation:template:parameter",
)]
# Namespaces of the Amazon Linux AMI platform versions (before Amazon Linux 2) only, and what
# replaced them (PYTHON).
PRE_AL2_NAMESPACES = {
    "aws:elasticbeanstalk:container:python:staticfiles": "aws:elasticbeanstalk:environment:proxy:staticfiles",
}
# What the page says applies to some load balancer types only: the aws:elbv2 namespaces are the
# Application and Network Load Balancers', aws:elbv2:loadbalancer and listener rules "aren't
# applicable to environments with a network load balancer", and of a process's options
# MatcherHTTPCode is for a network or application load balancer, HealthCheckTimeout and the
# Stickiness options for an application load balancer (GENERAL). The environment's type is
# aws:elasticbeanstalk:environment LoadBalancerType, default `classic`, chosen at creation only
# (DG + "environments-cfg-alb.html"); .ebextensions may set it (DG + "ebextensions.html").
BOTH = ("application", "network")
APPLICATION_ONLY = ("application",)


def balancer_types(ns_name: str, option: str) -> tuple[str, ...] | None:
    """The load balancer types an option applies to; None when the page sets no limit."""
    if ns_name == "aws:elbv2:loadbalancer" or ns_name.startswith("aws:elbv2:listenerrule:"):
        return APPLICATION_ONLY
    if ns_name.startswith("aws:elbv2:listener:"):
        return BOTH
    if ns_name.startswith("aws:elasticbeanstalk:environment:process:"):
        if option == "MatcherHTTPCode":
            return BOTH
        if option == "HealthCheckTimeout" or option.startswith("Stickiness"):
            return APPLICATION_ONLY
    return None


# Environment property names: letters, digits and _ . : / + \ - @; all of them together, as
# key=value, at most 4,096 bytes (SOFTWARE_SETTINGS).
PROPERTY_NAME = re.compile(r"[\w.:/+\\@-]+")
PROPERTIES_BYTES = 4096
# Properties the platform itself reads: PORT, where nginx sends requests (PROXY).
PROPERTIES = {"PORT": integer(1, 65535)}


def namespace(name: str) -> Namespace | None:
    if name in NAMESPACES:
        return NAMESPACES[name]
    return next((ns for pattern, ns in PATTERNS.items() if pattern.fullmatch(name)), None)


def _suggest(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not close:
        close = [c for c in candidates if c.lower() == word.lower()]
    return f"did you mean {close[0]!r}? " if close else ""


Setting = tuple[str, str, str, str]  # (file, namespace, option, value)


def check(settings: list[Setting], staging: Path, procfile_target: str | None) -> list[str]:
    """Problems with `settings` (in file order), each naming the file, namespace, option and fix."""
    chosen = next((value for _, ns, option, value in reversed(settings) if (ns, option) == BALANCER_TYPE), None)
    balancer = chosen or "classic"
    problems = []
    for name, ns_name, option, value in settings:
        if ns_name in PRE_AL2_NAMESPACES:
            problems.append(f"{name}: {ns_name} is a namespace of the Amazon Linux AMI platform versions "
                            f"(before Amazon Linux 2); on Amazon Linux 2023 use {PRE_AL2_NAMESPACES[ns_name]}, "
                            f"with the same options ({PYTHON})")
            continue
        ns = namespace(ns_name)
        if ns is None:
            if not any(p.fullmatch(ns_name) for p in UNMODELLED):
                known = [*NAMESPACES, "aws:elasticbeanstalk:environment:process:default"]
                problems.append(f"{name}: unknown option namespace {ns_name!r}; check the spelling against "
                                f"Beanstalk's documented namespaces: {_suggest(ns_name, known)}({GENERAL})")
            continue
        if ns.any_name:
            continue
        if option not in ns.options:
            problems.append(f"{name}: {ns_name} has no option {option!r}; {_suggest(option, ns.options)}"
                            f"Beanstalk's options there: {', '.join(ns.options)} ({ns.doc})")
            continue
        values = ns.options[option]
        if not values.accepts(value, balancer):
            problems.append(f"{name}: {ns_name} {option} {value!r} is not valid: it must be {values.describe} "
                            f"({ns.doc})")
        types = balancer_types(ns_name, option)
        if types and balancer not in types:
            which = " or ".join(f"an {t} load balancer" if t == "application" else f"a {t} load balancer"
                                for t in types)
            fix = ("no .ebextensions file sets aws:elasticbeanstalk:environment LoadBalancerType, whose default "
                   "is classic; set LoadBalancerType: application" if chosen is None else
                   f"LoadBalancerType is {chosen}; remove the option, or create the environment with "
                   f"LoadBalancerType: {types[0]} (the type is chosen at creation only)")
            problems.append(f"{name}: {ns_name} {option} applies to {which} only, and {fix} "
                            f"({GENERAL}#command-options-general-elasticbeanstalkenvironment)")
    problems += _related_options(settings, balancer)
    problems += _environment_properties(settings)
    problems += _static_files(settings, staging)
    problems += _python_container(settings, staging, procfile_target)
    return problems


# Beanstalk's defaults for the options the rules below compare (GENERAL): with an application
# load balancer a health check every 15 s that times out after 5; an Auto Scaling group of at
# most 4; deployment batches as a percentage.
DEFAULTS = {("aws:elasticbeanstalk:environment:process:", "HealthCheckInterval"): "15",
            ("aws:elasticbeanstalk:environment:process:", "HealthCheckTimeout"): "5",
            ("aws:autoscaling:asg", "MaxSize"): "4",
            ("aws:elasticbeanstalk:command", "BatchSizeType"): "Percentage"}


def _related_options(settings: list[Setting], balancer: str) -> list[str]:
    """Rules between options, each valid alone, that the pages state (the last file setting an option wins).

    Only pairs of values that passed their own checks are compared: a value out of range has
    its own message already.
    """
    final: dict[tuple[str, str], tuple[str, str]] = {}
    for name, ns_name, option, value in settings:
        ns = namespace(ns_name)
        if ns is not None and not ns.any_name and option in ns.options:
            # A value refused on its own stays None: rules with it wait for its fix.
            accepted = ns.options[option].accepts(value, balancer)
            final[(ns_name, option)] = (name, value.strip() if accepted else None)

    def get(ns_name: str, option: str, default_ns: str | None = None):
        """(file or None for Beanstalk's default, value as int or text; None if refused)."""
        if (ns_name, option) in final:
            name, value = final[(ns_name, option)]
        else:
            name, value = None, DEFAULTS[(default_ns or ns_name, option)]
        return name, (None if value is None else int(value) if _integer(value) is not None else value)

    def shown(name: str | None, value) -> str:
        return f"{value} (set in {name})" if name else f"{value} (not set: Beanstalk's default)"

    problems = []
    processes = sorted({ns for ns, _ in final if ns.startswith("aws:elasticbeanstalk:environment:process:")})
    for ns_name in processes if balancer == "application" else []:
        timeout_file, timeout = get(ns_name, "HealthCheckTimeout", "aws:elasticbeanstalk:environment:process:")
        interval_file, interval = get(ns_name, "HealthCheckInterval", "aws:elasticbeanstalk:environment:process:")
        if None not in (timeout, interval) and timeout >= interval and (timeout_file or interval_file):
            problems.append(
                f"{timeout_file or interval_file}: {ns_name} HealthCheckTimeout {shown(timeout_file, timeout)} is not "
                f"below HealthCheckInterval {shown(interval_file, interval)}: the load balancer refuses a health "
                f"check whose timeout is not shorter than its interval, and the environment's stack fails; set "
                f"HealthCheckTimeout below {interval}, or HealthCheckInterval above {timeout} "
                f"({ELB_HEALTH_CHECK}; {TARGET_GROUP_HEALTH})")

    rolling = "aws:autoscaling:updatepolicy:rollingupdate"
    max_file, max_size = get("aws:autoscaling:asg", "MaxSize")
    if (rolling, "MinInstancesInService") in final:
        name, minimum = get(rolling, "MinInstancesInService")
        if None not in (minimum, max_size) and minimum >= max_size:
            problems.append(
                f"{name}: {rolling} MinInstancesInService {minimum} is not below aws:autoscaling:asg MaxSize "
                f"{shown(max_file, max_size)}: CloudFormation's rolling update policy requires it to be less; "
                f"set MinInstancesInService to at most {max_size - 1}, or raise MaxSize "
                f"({UPDATE_POLICY}; {NAMESPACES[rolling].doc})")

    launch = "aws:autoscaling:launchconfiguration"
    if (launch, "DisableDefaultEC2SecurityGroup") in final and (launch, "SecurityGroups") not in final:
        name, disabled = get(launch, "DisableDefaultEC2SecurityGroup")
        if str(disabled).lower() == "true":
            problems.append(
                f"{name}: {launch} DisableDefaultEC2SecurityGroup true leaves the instances without Beanstalk's "
                f"security group, and no file sets {launch} SecurityGroups: Beanstalk requires other groups "
                f"then; set SecurityGroups (scripts/provision --write-options writes the group the database "
                f"admits), or remove DisableDefaultEC2SecurityGroup ({EC2_SECURITY_GROUPS})")

    command = "aws:elasticbeanstalk:command"
    if (command, "BatchSize") in final:
        name, size = get(command, "BatchSize")
        type_file, size_type = get(command, "BatchSizeType")
        high = 100 if size_type == "Percentage" else max_size
        if None not in (size, size_type, high) and size > high:
            limit = ("100 (a percentage of the instances)" if size_type == "Percentage" else
                     f"aws:autoscaling:asg MaxSize, {shown(max_file, max_size)}")
            problems.append(
                f"{name}: {command} BatchSize {size} with BatchSizeType {shown(type_file, size_type)} is not "
                f"valid: it must be from 1 to {limit}; set BatchSize to at most {high} "
                f"({NAMESPACES[command].doc})")
    return problems


def absent_resources(options: dict[str, dict[str, str]]) -> dict[str, str]:
    """Resources of every environment's stack that these option settings make Beanstalk leave out,
    each with the reason: a Resource of .ebextensions referring to one fails the stack."""
    absent = {}
    launch = options.get("aws:autoscaling:launchconfiguration", {})
    if str(launch.get("DisableDefaultEC2SecurityGroup", "false")).lower() == "true":
        absent["AWSEBSecurityGroup"] = (
            "aws:autoscaling:launchconfiguration DisableDefaultEC2SecurityGroup is true; refer to a group of "
            f"its SecurityGroups option instead, or keep Beanstalk's group ({EC2_SECURITY_GROUPS})")
    if options.get("aws:elasticbeanstalk:environment", {}).get("EnvironmentType") == "SingleInstance":
        absent["AWSEBV2LoadBalancer"] = ("aws:elasticbeanstalk:environment EnvironmentType is SingleInstance, "
                                         f"which has no load balancer ({STACK_RESOURCES})")
    return absent


def _environment_properties(settings: list[Setting]) -> list[str]:
    problems = []
    final: dict[str, tuple[str, str]] = {}
    for name, ns_name, option, value in settings:
        if ns_name not in (ENVIRONMENT, "aws:elasticbeanstalk:application:environmentsecrets"):
            continue
        if not PROPERTY_NAME.fullmatch(option):
            problems.append(f"{name}: {ns_name} {option!r} is not a valid environment property name: "
                            r"letters, digits and _ . : / + \ - @ only; for every platform, "
                            f"[A-Z_][A-Z0-9_]* ({SOFTWARE_SETTINGS})")
        if ns_name == ENVIRONMENT:
            final[option] = (name, value)
            rule = PROPERTIES.get(option)
            if rule and not rule.accepts(value, ""):
                problems.append(f"{name}: {ns_name} {option} {value!r} is not valid: it must be "
                                f"{rule.describe} (the port nginx forwards requests to, {PROXY})")
    size = sum(len(f"{k}={v}".encode()) for k, (_, v) in final.items())
    if size > PROPERTIES_BYTES:
        files = sorted({n for n, _ in final.values()})
        problems.append(f"{', '.join(files)}: the {ENVIRONMENT} properties take {size} bytes as key=value, "
                        f"over Beanstalk's {PROPERTIES_BYTES}; move long values to a secret "
                        f"(aws:elasticbeanstalk:application:environmentsecrets) or a file ({SOFTWARE_SETTINGS})")
    return problems


def _static_files(settings: list[Setting], staging: Path) -> list[str]:
    ns_name = "aws:elasticbeanstalk:environment:proxy:staticfiles"
    problems = []
    for name, ns, path, folder in settings:
        if ns != ns_name:
            continue
        if not path.startswith("/"):
            problems.append(f"{name}: {ns_name} {path!r}: the option name is the URL path the proxy serves "
                            f"and starts with /, e.g. /{path} ({NAMESPACES[ns_name].doc})")
        if not (staging / folder).is_dir():
            problems.append(f"{name}: {ns_name} {path}: {folder!r} is no folder of the bundle; name a folder "
                            f"at its top level, or add that folder ({NAMESPACES[ns_name].doc})")
    return problems


def wsgi_module(value: str) -> tuple[str, str] | None:
    """WSGIPath as (module, callable): `module:callable`, `module` or `path/file.py` (callable `application`)."""
    module, colon, attr = value.strip().partition(":")
    attr = attr or "application"
    if not colon and module.endswith(".py"):
        module = module[:-3].replace("/", ".")
    dotted = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
    return (module, attr) if dotted.fullmatch(module) and re.fullmatch(r"[A-Za-z_]\w*", attr) else None


def top_level_names(tree: ast.Module) -> set[str]:
    """Names a module may bind when it runs ("*" for a star import): assignments, definitions,
    imports, `with ... as`, for targets, walrus targets, match captures and
    names a function declares global, at its top level and inside any block (if, try and
    try/except*, with, for, while, match). Lenient: a name it misses would refuse a module that
    loads, while one it accepts wrongly is still caught by importing the module."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                if not isinstance(child, ast.Lambda):
                    names.add(child.name)
                names.update(n for g in ast.walk(child) if isinstance(g, ast.Global) for n in g.names)
                continue
            if isinstance(child, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                # Only a walrus in a comprehension binds in the module.
                names.update(w.target.id for w in ast.walk(child) if isinstance(w, ast.NamedExpr))
                continue
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                names.add(child.id)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in child.names)
            elif isinstance(child, (ast.MatchAs, ast.MatchStar)) and child.name:
                names.add(child.name)
            elif isinstance(child, ast.MatchMapping) and child.rest:
                names.add(child.rest)
            visit(child)

    visit(tree)
    return names


def module_problem(source: Path, staging: Path, attr: str) -> str | None:
    """Why `source` cannot serve `attr`: a syntax error, or no top-level binding of it (a star
    import may bind anything: the import tells); None when it may."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except SyntaxError as err:
        return (f"{source.relative_to(staging)} does not compile (SyntaxError: {err.msg}, line {err.lineno}), "
                f"so it defines no {attr!r}")
    names = top_level_names(tree)
    if attr in names or "*" in names:
        return None
    return f"{source.relative_to(staging)} defines no {attr!r}"


def _python_container(settings: list[Setting], staging: Path, procfile_target: str | None) -> list[str]:
    problems = []
    doc = NAMESPACES[PYTHON_CONTAINER].doc
    for name, ns, option, value in settings:
        if ns != PYTHON_CONTAINER or option not in NAMESPACES[PYTHON_CONTAINER].options:
            continue
        target = None
        if option == "WSGIPath":
            parsed = wsgi_module(value)
            if parsed is None:
                problems.append(f"{name}: {ns} WSGIPath {value!r} is neither module:callable nor a .py file; "
                                f"e.g. application:application ({PYTHON})")
                continue
            module, attr = parsed
            target = f"{module}:{attr}"
            base = staging / module.replace(".", "/")
            source = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)
            if source is None:
                problems.append(f"{name}: {ns} WSGIPath {value!r}: the bundle has no module {module} "
                                f"({module.replace('.', '/')}.py); point it at the module that defines the "
                                f"WSGI callable, as application:application ({PYTHON})")
                continue
            why = module_problem(source, staging, attr)
            if why is not None:
                problems.append(f"{name}: {ns} WSGIPath {value!r}: {why}, the callable Beanstalk would serve; "
                                f"point it at the module that defines it, as application:application ({doc})")
                continue
        if procfile_target is not None and target != procfile_target:
            problems.append(f"{name}: {ns} {option} {value!r} is ignored: a Procfile overrides the {ns} "
                            f"options, and its web: command serves {procfile_target}; remove {option}, or "
                            f"change the Procfile's command instead ({PROCFILE})")
    return problems
