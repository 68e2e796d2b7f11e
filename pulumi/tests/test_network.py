"""The VPC: private and public subnets across zones, NAT egress, an S3 gateway endpoint."""

from __future__ import annotations

import ipaddress

import pytest

from conftest import NO_GPU_ZONE_IDS, Deployment
from tickcast_infra.network import EKS_UNSUPPORTED_ZONE_IDS, choose_zone_ids, subnet_plan


def test_subnets_spread_over_the_configured_zones(deployment: Deployment) -> None:
    count = deployment.config["tickcast:azCount"]
    subnets = deployment.of_type("aws:ec2/subnet:Subnet")
    private = [s for s in subnets if "private" in s.name]
    public = [s for s in subnets if "public" in s.name]
    assert len(private) == len(public) == count
    assert len({s.inputs["availabilityZoneId"] for s in private}) == count
    assert all("availabilityZone" not in s.inputs for s in subnets), "zones go by ID, not by name"
    assert all(s.inputs["mapPublicIpOnLaunch"] is False for s in subnets)
    assert all(s.inputs["tags"]["kubernetes.io/role/internal-elb"] == "1" for s in private)
    assert all(s.inputs["tags"]["kubernetes.io/role/elb"] == "1" for s in public)


def test_private_route_tables_go_through_nat(deployment: Deployment) -> None:
    tables = [t for t in deployment.of_type("aws:ec2/routeTable:RouteTable") if "private" in t.name]
    assert tables and all(t.inputs["routes"][0].get("natGatewayId") for t in tables)
    assert all("gatewayId" not in t.inputs["routes"][0] for t in tables)


def test_nat_gateways_follow_config(dev: Deployment, prod: Deployment) -> None:
    assert len(dev.of_type("aws:ec2/natGateway:NatGateway")) == 1
    assert len(prod.of_type("aws:ec2/natGateway:NatGateway")) == prod.config["tickcast:azCount"] == 3


def test_s3_traffic_uses_a_gateway_endpoint(deployment: Deployment) -> None:
    endpoint = deployment.one("aws:ec2/vpcEndpoint:VpcEndpoint").inputs
    assert endpoint["vpcEndpointType"] == "Gateway"
    assert endpoint["serviceName"] == f"com.amazonaws.{deployment.config['aws:region']}.s3"
    assert len(endpoint["routeTableIds"]) == deployment.config["tickcast:azCount"]


@pytest.mark.parametrize(("cidr", "zones"), [("10.0.0.0/16", 2), ("10.0.0.0/16", 3), ("172.20.0.0/20", 6)])
def test_subnet_plan_has_disjoint_subnets_inside_the_vpc(cidr: str, zones: int) -> None:
    private, public = subnet_plan(cidr, zones)
    networks = [ipaddress.ip_network(c) for c in private + public]
    assert len(private) == len(public) == zones
    vpc = ipaddress.ip_network(cidr)
    assert all(n.subnet_of(vpc) for n in networks)
    assert all(not a.overlaps(b) for i, a in enumerate(networks) for b in networks[i + 1 :])


def test_subnet_plan_refuses_too_many_zones() -> None:
    with pytest.raises(ValueError, match="room for 7 zones"):
        subnet_plan("10.0.0.0/16", 8)


def test_zones_are_chosen_by_id_where_eks_and_the_instance_types_are_offered(prod: Deployment) -> None:
    """The mocked region has use1-az1..6: az3 is not offered by EKS, az2 offers no GPU type."""
    zones = sorted({s.inputs["availabilityZoneId"] for s in prod.of_type("aws:ec2/subnet:Subnet")})
    assert zones == ["use1-az1", "use1-az4", "use1-az5"]
    assert "use1-az3" in EKS_UNSUPPORTED_ZONE_IDS and "use1-az2" in NO_GPU_ZONE_IDS


def test_choose_zone_ids_says_which_zones_were_left_out() -> None:
    available = ["use1-az1", "use1-az2", "use1-az3"]
    assert choose_zone_ids(available, [available, ["use1-az1", "use1-az3"]], 1) == ["use1-az1"]
    with pytest.raises(ValueError, match=r"only \['use1-az1'\] .* support EKS"):
        choose_zone_ids(available, [available, ["use1-az1", "use1-az3"]], 2)
