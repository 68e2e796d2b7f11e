"""Network: a VPC with public and private subnets across availability zones."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from tickcast_infra.config import NatGateways


def subnet_plan(vpc_cidr: str, az_count: int) -> tuple[list[str], list[str]]:
    """CIDRs of the (private, public) subnets: large private /N+3 blocks, small public ones.

    Private subnets take the first eighths of the VPC (nodes, pods with the VPC CNI, brokers);
    the public ones (NAT gateways, load balancers) share the last eighth.
    """
    network = ipaddress.ip_network(vpc_cidr)
    eighths: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = list(
        network.subnets(new_prefix=network.prefixlen + 3)
    )
    if az_count > len(eighths) - 1:
        raise ValueError(f"{vpc_cidr} has room for {len(eighths) - 1} zones, not {az_count}")
    private = [str(block) for block in eighths[:az_count]]
    public = [str(block) for block in list(eighths[-1].subnets(new_prefix=network.prefixlen + 6))[:az_count]]
    return private, public


EKS_UNSUPPORTED_ZONE_IDS = frozenset({"use1-az3", "usw1-az2", "cac1-az3"})
"""Zone IDs where EKS cannot place its control-plane network interfaces (EKS user guide, "VPC and
subnet requirements"). MSK brokers share the same private subnets, and the MSK guide lists no
further exclusion for the zones EKS accepts; an unsupported zone would fail MSK's create call
by name, so this list is where to add one."""


def choose_zone_ids(available: Sequence[str], offering: Sequence[Sequence[str]], count: int) -> list[str]:
    """The first ``count`` zone IDs (sorted) that EKS supports and where every instance-type
    family in ``offering`` (each a list of zone IDs offering at least one of its types) exists.

    Raises:
        ValueError: fewer such zones than ``count``, naming the ones excluded and why.
    """
    usable = [z for z in sorted(available) if z not in EKS_UNSUPPORTED_ZONE_IDS]
    for zones in offering:
        usable = [z for z in usable if z in set(zones)]
    if len(usable) < count:
        raise ValueError(
            f"tickcast:azCount is {count}, but only {usable} of the region's zones {sorted(available)} "
            f"support EKS ({sorted(EKS_UNSUPPORTED_ZONE_IDS)} do not) and offer the CPU and GPU instance "
            "types; lower azCount or add instance types to tickcast:cpuInstanceTypes / gpuInstanceTypes"
        )
    return usable[:count]


@dataclass(frozen=True)
class NetworkArgs:
    """What the network needs: its address range, zones (by zone ID), and how many NAT gateways."""

    cluster_name: str
    region: str
    vpc_cidr: str
    zone_ids: Sequence[str]
    """Zone IDs (``use1-az1``), not names: names map to different physical zones per account."""
    nat_gateways: NatGateways


class Network(pulumi.ComponentResource):
    """A VPC, one public and one private subnet per zone, NAT egress, and an S3 gateway endpoint.

    Subnets carry the tags the AWS load balancer controller looks for: public ones for
    internet-facing load balancers, private ones for internal ones.
    """

    vpc_id: pulumi.Output[str]
    private_subnet_ids: list[pulumi.Output[str]]
    public_subnet_ids: list[pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickcast:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        private_cidrs, public_cidrs = subnet_plan(args.vpc_cidr, len(args.zone_ids))

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.vpc_cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": args.cluster_name},
            opts=child,
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={"Name": args.cluster_name}, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags={"Name": f"{args.cluster_name}-public"},
            opts=child,
        )

        public_subnets: list[aws.ec2.Subnet] = []
        private_subnets: list[aws.ec2.Subnet] = []
        nat_ids: list[pulumi.Output[str]] = []
        private_route_tables: list[aws.ec2.RouteTable] = []
        for index, zone in enumerate(args.zone_ids):
            public = aws.ec2.Subnet(
                f"{name}-public-{index}",
                vpc_id=vpc.id,
                cidr_block=public_cidrs[index],
                availability_zone_id=zone,
                map_public_ip_on_launch=False,
                tags={"Name": f"{args.cluster_name}-public-{zone}", "kubernetes.io/role/elb": "1"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{index}", subnet_id=public.id, route_table_id=public_rt.id, opts=child
            )
            public_subnets.append(public)
            if index == 0 or args.nat_gateways == "perAz":
                eip = aws.ec2.Eip(f"{name}-nat-{index}", domain="vpc", opts=child)
                nat = aws.ec2.NatGateway(
                    f"{name}-nat-{index}",
                    allocation_id=eip.id,
                    subnet_id=public.id,
                    tags={"Name": f"{args.cluster_name}-{zone}"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                )
                nat_ids.append(nat.id)
            private = aws.ec2.Subnet(
                f"{name}-private-{index}",
                vpc_id=vpc.id,
                cidr_block=private_cidrs[index],
                availability_zone_id=zone,
                map_public_ip_on_launch=False,
                tags={"Name": f"{args.cluster_name}-private-{zone}", "kubernetes.io/role/internal-elb": "1"},
                opts=child,
            )
            route_table = aws.ec2.RouteTable(
                f"{name}-private-{index}",
                vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat_ids[-1])],
                tags={"Name": f"{args.cluster_name}-private-{zone}"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{index}", subnet_id=private.id, route_table_id=route_table.id, opts=child
            )
            private_subnets.append(private)
            private_route_tables.append(route_table)

        # Lake traffic stays on the AWS network and skips NAT data-processing charges.
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[rt.id for rt in private_route_tables],
            tags={"Name": f"{args.cluster_name}-s3"},
            opts=child,
        )

        self.vpc_id = vpc.id
        self.private_subnet_ids = [s.id for s in private_subnets]
        self.public_subnet_ids = [s.id for s in public_subnets]
        self.register_outputs({"vpcId": self.vpc_id})
