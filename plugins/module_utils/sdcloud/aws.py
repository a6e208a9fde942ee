"""AWS backend (boto3 / EC2).

Zones: `zones` holds AWS regions and/or availability zones, in preference order. A region expands
to its available AZs (alphabetical); an AZ is tried as given. Example: [us-east-1b, us-east-1, us-west-2].

Per deployment <name> in each region used, sdcloud creates (all tagged sdcloud-managed=true,
sdcloud-deployment=<name>):
- key pair      sdcloud-<name>      (when an ssh_public_key is given)
- security group sdcloud-<name>     (default VPC; no ingress until cloud_firewall adds it)
- the instance, its root EBS volume, and for spot its persistent spot request.

Placement is base.Backend.create_instance; this file writes its hooks (placement_zones expands
regions, offers_in_zone reads DescribeInstanceTypeOfferings, try_zone prepares the region once and
calls RunInstances without SDK retries, classify_error sorts capacity / quota / throttling codes).

Throttling (RequestLimitExceeded) is per account and region: RunInstances is retried with backoff within
the deadline, then the region is given up (its other zones skipped, in the on-demand pass too) with "EC2 is
throttling this account in <region>: wait a few minutes and re-run"; other regions are still tried.
A spot instance found stopped/terminated with a Server.SpotInstance* StateReason during the create wait was
interrupted (Backend.preemption): it is deleted and the walk goes on.
The key pair: a tagged pair of the deployment's name holding another key (compared with DescribeKeyPairs
IncludePublicKey) is replaced before a create; an existing instance launched with it fails with the fix
(ensure_ssh_key), since EC2 cannot change an instance's key.
The sweep adds the Resource Groups Tagging API (tag:GetResources): any other tagged resource (a snapshot, an
AMI, another service's) is listed as snapshot / image / other, never deleted.

Host keys: cloud-init prints the instance's SSH host keys on the serial console between
"-----BEGIN SSH HOST KEY KEYS-----" and "-----END SSH HOST KEY KEYS-----"; host_keys() reads them
with GetConsoleOutput (Latest=true on Nitro instance types, the buffered output otherwise) so the
controller pins them before its first connection.
"""

from __future__ import annotations

import datetime
import itertools
import re
import time

from ansible.module_utils.sdcloud import catalog
from ansible.module_utils.sdcloud.base import (
    CODE_NO_CAPACITY,
    CODE_NO_NETWORK,
    CODE_QUOTA,
    CODE_THROTTLED,
    DELETE_ORDER,
    KEPT_KINDS,
    KIND_ADDRESS,
    KIND_DISK,
    KIND_FIREWALL,
    KIND_IMAGE,
    KIND_INSTANCE,
    KIND_KEY_PAIR,
    KIND_OTHER,
    KIND_SNAPSHOT,
    KIND_SPOT_REQUEST,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    PENDING,
    RUNNING,
    SCOPE_REGION,
    STOPPED,
    STOPPING,
    TERMINATED,
    Backend,
    Deadline,
    Firewall,
    FirewallSpec,
    Instance,
    InstanceSpec,
    Refusal,
    Resource,
    SdcloudError,
    ZoneRefused,
    managed_labels,
    valid_host_key,
    wait_for,
)
from ansible.module_utils.sdcloud.clients import aws_client, aws_session
from ansible.module_utils.sdcloud.errors import (
    AWS_CAPACITY,
    AWS_QUOTA,
    aws_call,
    aws_code,
    aws_error,
    aws_message,
    is_aws_throttling,
    quota_help,
    retry,
)

PROVIDER = "aws"
TAG_SSH_USER = "sdcloud-ssh-user"
TAG_GPU = "sdcloud-gpu"

_STATES = {
    "pending": PENDING,
    "running": RUNNING,
    "stopping": STOPPING,
    "stopped": STOPPED,
    "shutting-down": TERMINATED,
    "terminated": TERMINATED,
}
LIVE_STATES = ["pending", "running", "stopping", "stopped"]

# StateReason codes of a spot interruption (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html):
# "Server.SpotInstanceShutdown: The instance was stopped because the number of Spot requests with a maximum
# price equal to or higher than the Spot price exceeded available capacity ...", and ...Termination likewise.
SPOT_INTERRUPTED = frozenset({"Server.SpotInstanceShutdown", "Server.SpotInstanceTermination"})

# Resource Groups Tagging API resource types the explicit EC2 listings below already cover (with the states
# that matter: a terminated instance stays "tagged" there for a while); any other tagged type is listed from it.
COVERED_ARN_TYPES = frozenset({"instance", "volume", "security-group", "key-pair", "elastic-ip",
                               "spot-instances-request"})
ARN_KINDS = {"snapshot": KIND_SNAPSHOT, "image": KIND_IMAGE}


def throttle_fix(region: str) -> str:
    """EC2 limits API requests per account and region (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html):
    more zones or another market do not help, time does."""
    return f"EC2 is throttling this account in {region}: wait a few minutes and re-run"


def key_material(public_key: str | None) -> str | None:
    """'type base64' of an OpenSSH public key line (the comment dropped), to compare two keys."""
    fields = (public_key or "").split()
    return " ".join(fields[:2]) if len(fields) >= 2 else None

_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_AZ_RE = re.compile(r"(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)(?:[a-z]|-[a-z]+-\d+[a-z])")


def region_of(zone_or_region: str) -> str:
    """us-east-1b -> us-east-1; us-east-1 -> us-east-1; us-west-2-lax-1a -> us-west-2."""
    if _REGION_RE.fullmatch(zone_or_region):
        return zone_or_region
    m = _AZ_RE.fullmatch(zone_or_region)
    if not m:
        raise SdcloudError(
            f"{zone_or_region!r} is neither an AWS region (us-east-1) nor an availability zone (us-east-1a): "
            "fix `zones`"
        )
    return m.group("region")


def is_region(zone_or_region: str) -> bool:
    return bool(_REGION_RE.fullmatch(zone_or_region))


def resource_name(deployment: str) -> str:
    return f"sdcloud-{deployment}"


def _tags_dict(tags) -> dict:
    return {t["Key"]: t["Value"] for t in tags or []}


def _tag_list(labels: dict) -> list:
    return [{"Key": str(k), "Value": str(v)} for k, v in labels.items()]


def _tag_filters(deployment: str | None) -> list:
    filters = [{"Name": f"tag:{LABEL_MANAGED}", "Values": ["true"]}]
    if deployment:
        filters.append({"Name": f"tag:{LABEL_DEPLOYMENT}", "Values": [deployment]})
    return filters


def _iso(value) -> str | None:
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat()
    return value


def instance_from_aws(d: dict, region: str, disk_size_gb: int | None = None) -> Instance:
    """base.Instance from a describe_instances entry."""
    tags = _tags_dict(d.get("Tags"))
    offer = catalog.find_offering(PROVIDER, d.get("InstanceType"))
    spot = d.get("InstanceLifecycle") == "spot"
    zone = d.get("Placement", {}).get("AvailabilityZone") or ""
    return Instance(
        name=tags.get(LABEL_DEPLOYMENT) or tags.get("Name") or d["InstanceId"],
        provider=PROVIDER,
        id=d["InstanceId"],
        zone=zone,
        region=region,
        state=_STATES.get(d.get("State", {}).get("Name"), d.get("State", {}).get("Name")),
        gpu=offer.gpu if offer else tags.get(TAG_GPU),
        machine_type=d.get("InstanceType"),
        spot=spot,
        public_ip=d.get("PublicIpAddress"),
        private_ip=d.get("PrivateIpAddress"),
        labels=tags,
        created=_iso(d.get("LaunchTime")),
        hourly_price=offer.hourly(spot) if offer else None,
        ssh_user=tags.get(TAG_SSH_USER) or catalog.DEFAULT_SSH_USER,
        image=d.get("ImageId"),
        disk_size_gb=disk_size_gb,
    )


_KEYS_BLOCK = re.compile(r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", re.S)


def console_host_keys(output: str) -> list:
    """The host keys of the last cloud-init keys block in console output; lines may carry a console prefix
    ("ec2: ", "[   12.3] cloud-init[812]: "). Only well-formed keys of their stated type."""
    blocks = _KEYS_BLOCK.findall(output or "")
    keys = set()
    for line in (blocks[-1] if blocks else "").splitlines():
        fields = line.split()
        for key_type, blob in itertools.pairwise(fields):
            if valid_host_key(key_type, blob):
                keys.add(f"{key_type} {blob}")
                break
    return sorted(keys)


def _describe_instances(ec2, region: str, deployment: str | None, states=None) -> list:
    filters = _tag_filters(deployment) + [{"Name": "instance-state-name", "Values": states or LIVE_STATES}]
    pages = aws_call(ec2.get_paginator("describe_instances").paginate(Filters=filters).build_full_result,
                     "listing instances (DescribeInstances)", region)
    return [instance_from_aws(d, region) for r in pages.get("Reservations", []) for d in r.get("Instances", [])]


class AwsBackend(Backend):
    provider = PROVIDER

    def __init__(self, zones=None, endpoint_url: str | None = None, profile: str | None = None):
        self.zones = [z.strip() for z in (zones or []) if z and z.strip()]
        self.endpoint_url = endpoint_url
        self.profile = profile
        regions = []
        for z in self.zones:
            r = region_of(z)
            if r not in regions:
                regions.append(r)
        if not regions:
            default = aws_session(profile).region_name
            if not default:
                raise SdcloudError("no AWS region: set `zones` to regions or zones, e.g. [us-east-1]")
            regions = [default]
        self.regions = regions
        self._clients: dict = {}
        self._offered: dict = {}  # (region, instance type) -> the AZs offering it
        self._state_reasons: dict = {}  # instance id -> its StateReason as last read (preemption)

    @classmethod
    def from_params(cls, params: dict) -> AwsBackend:
        return cls(params.get("zones") or [], endpoint_url=params.get("endpoint"), profile=params.get("profile"))

    # --- clients ---------------------------------------------------------------------------------
    def ec2(self, region: str, run: bool = False):
        """EC2 client. run=True: no SDK retries (RunInstances capacity errors are HTTP 500 and the SDK
        would retry them in the same zone; sdcloud moves to the next zone instead and retries
        throttling itself)."""
        key = (region, run)
        if key not in self._clients:
            extra = {"max_attempts": 1} if run else {}
            self._clients[key] = aws_client("ec2", region, self.endpoint_url, self.profile, **extra)
        return self._clients[key]

    # --- lookups ---------------------------------------------------------------------------------
    def find_instance(self, name: str) -> Instance | None:
        found = []
        for region in self.regions:
            found.extend(_describe_instances(self.ec2(region), region, name))
        if len(found) > 1:
            raise SdcloudError(
                f"deployment {name!r} has {len(found)} instances ({', '.join(f'{i.id} in {i.zone}' for i in found)}): "
                "sdcloud manages one; terminate the extra ones (EC2 console) or run cloud_resources state=absent"
            )
        if not found:
            return None
        inst = found[0]
        inst.disk_size_gb = self._root_disk_size(inst)
        return inst

    def list_instances(self, deployment: str | None = None) -> list:
        found = []
        for region in self.regions:
            found.extend(_describe_instances(self.ec2(region), region, deployment))
        return found

    def _get(self, inst: Instance) -> dict | None:
        ec2 = self.ec2(inst.region)
        res = aws_call(ec2.describe_instances, f"reading instance {inst.id}", inst.region, InstanceIds=[inst.id])
        for r in res.get("Reservations", []):
            for d in r.get("Instances", []):
                return d
        return None

    def _root_disk_size(self, inst: Instance) -> int | None:
        d = self._get(inst)
        if not d:
            return None
        root = d.get("RootDeviceName")
        vols = [m["Ebs"]["VolumeId"] for m in d.get("BlockDeviceMappings", [])
                if m.get("Ebs") and (m.get("DeviceName") == root or root is None)]
        if not vols:
            return None
        res = aws_call(self.ec2(inst.region).describe_volumes, "reading the root volume", inst.region,
                       VolumeIds=vols[:1])
        return res["Volumes"][0]["Size"] if res.get("Volumes") else None

    def candidate_zones(self, spec_zones) -> list:
        """Expand regions to their available AZs; keep AZs as given; drop duplicates."""
        out = []
        for z in spec_zones or self.zones or self.regions:
            if is_region(z):
                res = aws_call(self.ec2(z).describe_availability_zones, "listing availability zones", z,
                               Filters=[{"Name": "state", "Values": ["available"]},
                                        {"Name": "zone-type", "Values": ["availability-zone"]}])
                azs = sorted(a["ZoneName"] for a in res.get("AvailabilityZones", []))
            else:
                azs = [z]
            out.extend(a for a in azs if a not in out)
        return out

    def offered_zones(self, region: str, instance_type: str) -> set:
        res = aws_call(self.ec2(region).describe_instance_type_offerings,
                       f"listing where {instance_type} is offered", region,
                       LocationType="availability-zone",
                       Filters=[{"Name": "instance-type", "Values": [instance_type]}])
        return {o["Location"] for o in res.get("InstanceTypeOfferings", [])}

    def resolve_image(self, region: str, spec: InstanceSpec) -> dict:
        """The AMI to boot: an ami-id as given, or the newest x86_64 image matching an alias or name filter.
        Name filters are only searched among images owned by Amazon, Canonical, or this account."""
        ec2 = self.ec2(region)
        wanted = spec.image or spec.image_family or catalog.AWS_DEFAULT_IMAGE
        if wanted.startswith("ami-"):
            res = aws_call(ec2.describe_images, f"looking up AMI {wanted}", region, ImageIds=[wanted])
            if not res.get("Images"):
                raise SdcloudError(f"AMI {wanted} not found in {region}: AMI ids are per region; "
                                   "give a name filter or an alias (dlami-ubuntu-22.04, ubuntu-22.04 ...) instead")
            return res["Images"][0]
        if wanted in catalog.AWS_IMAGES:
            owner, pattern = catalog.AWS_IMAGES[wanted]
            owners = [owner]
        else:
            pattern = wanted
            owners = [catalog.AWS_OWNER_AMAZON, catalog.AWS_OWNER_CANONICAL, "self"]
        res = aws_call(ec2.describe_images, f"looking up images named {pattern!r}", region, Owners=owners,
                       Filters=[{"Name": "name", "Values": [pattern]},
                                {"Name": "architecture", "Values": ["x86_64"]},
                                {"Name": "state", "Values": ["available"]}])
        images = sorted(res.get("Images", []), key=lambda i: i.get("CreationDate", ""), reverse=True)
        if not images:
            raise SdcloudError(
                f"no x86_64 image named {pattern!r} (owners {', '.join(owners)}) in {region}: fix `image`, or use "
                f"one of the aliases {', '.join(catalog.AWS_IMAGES)}"
            )
        return images[0]

    def read_instance(self, instance: Instance) -> Instance | None:
        d = self._get(instance)
        if not d:
            return None
        self._state_reasons[d["InstanceId"]] = d.get("StateReason") or {}
        return instance_from_aws(d, instance.region, instance.disk_size_gb)

    def preemption(self, instance: Instance) -> tuple | None:
        """A spot interruption: stopping, stopped or terminated with a Server.SpotInstance* StateReason."""
        reason = self._state_reasons.get(instance.id) or {}
        if instance.spot and instance.state in (STOPPING, STOPPED, TERMINATED) and reason.get("Code") in SPOT_INTERRUPTED:
            return (f"EC2 interrupted the spot instance {instance.id} in {instance.zone} before it ran "
                    f"({reason.get('Message') or reason['Code']}); it was deleted", reason["Code"])
        return None

    def ensure_ssh_key(self, instance: Instance, ssh_user: str, public_key: str, wait_timeout: int,
                       check: bool = False) -> bool:
        """EC2 puts the key pair's key on the instance at its first boot only: when the deployment's key pair holds
        another key than ssh_public_key, the instance has the old key. Say so and how to fix (nothing changes)."""
        d = self._get(instance) or {}
        key_name = d.get("KeyName")
        if not key_name:
            return False  # launched without a key pair: nothing to compare
        res = aws_call(self.ec2(instance.region).describe_key_pairs, "reading the key pair", instance.region,
                       Filters=[{"Name": "key-name", "Values": [key_name]}], IncludePublicKey=True)
        pairs = res.get("KeyPairs", [])
        have = key_material(pairs[0].get("PublicKey")) if pairs else None
        if have is None or have == key_material(public_key):
            return False
        raise SdcloudError(
            f"instance {instance.id} of deployment {instance.name!r} was launched with key pair {key_name}, which "
            f"holds another SSH key than ssh_public_key (your key changed since?): EC2 cannot change the key of an "
            f"instance, so SSH with the new key would be refused. Fix: use the old key again (sdcloud_ssh_key_path); "
            f"or append the new public key to ~{ssh_user}/.ssh/authorized_keys on the machine (with the old key, or "
            f"EC2 Instance Connect) and then replace the key pair (`aws ec2 delete-key-pair --key-name {key_name} "
            f"--region {instance.region}`; sdcloud imports the new key on the next create); or delete the "
            f"instance (teardown.yml; its disk goes with it) and provision again", code="KeyMismatch")

    # --- per-deployment prerequisites ------------------------------------------------------------
    def _default_vpc(self, region: str) -> str:
        res = aws_call(self.ec2(region).describe_vpcs, "finding the default VPC", region,
                       Filters=[{"Name": "isDefault", "Values": ["true"]}])
        if not res.get("Vpcs"):
            raise SdcloudError(f"region {region} has no default VPC: create one with "
                               f"`aws ec2 create-default-vpc --region {region}`, or use another region")
        return res["Vpcs"][0]["VpcId"]

    def _subnet(self, region: str, vpc: str, az: str) -> str | None:
        res = aws_call(self.ec2(region).describe_subnets, f"finding the default subnet of {az}", region,
                       Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "availability-zone", "Values": [az]}])
        subnets = sorted(res.get("Subnets", []), key=lambda s: not s.get("DefaultForAz"))
        return subnets[0]["SubnetId"] if subnets else None

    def _find_sg(self, region: str, name: str) -> dict | None:
        res = aws_call(self.ec2(region).describe_security_groups, "finding the security group", region,
                       Filters=_tag_filters(name))
        groups = res.get("SecurityGroups", [])
        return groups[0] if groups else None

    def ensure_security_group(self, region: str, name: str, labels: dict) -> tuple:
        """(group id, created?) of the deployment's security group in region's default VPC."""
        sg = self._find_sg(region, name)
        if sg:
            return sg["GroupId"], False
        vpc = self._default_vpc(region)
        res = aws_call(self.ec2(region).create_security_group, "creating the security group", region,
                       GroupName=resource_name(name), VpcId=vpc,
                       Description=f"sdcloud {name}: SSH/UI from the operator's addresses only",
                       TagSpecifications=[{"ResourceType": "security-group",
                                           "Tags": _tag_list(dict(labels, Name=resource_name(name)))}])
        return res["GroupId"], True

    def ensure_key_pair(self, region: str, name: str, public_key: str, labels: dict) -> str:
        ec2 = self.ec2(region)
        key_name = resource_name(name)
        res = aws_call(ec2.describe_key_pairs, "finding the key pair", region, Filters=_tag_filters(name),
                       IncludePublicKey=True)
        for kp in res.get("KeyPairs", []):
            if kp["KeyName"] != key_name:
                continue
            if key_material(kp.get("PublicKey")) in (None, key_material(public_key)):
                return key_name
            # The operator's key changed (a new computer) and no instance uses the pair yet (gpu_instance found
            # none): an instance launched with the old one could not be reached. Replace it before the launch.
            aws_call(ec2.delete_key_pair, f"replacing key pair {key_name} (it holds another key)", region,
                     KeyName=key_name)
        try:
            retry(ec2.import_key_pair, KeyName=key_name, PublicKeyMaterial=public_key.strip().encode(),
                  TagSpecifications=[{"ResourceType": "key-pair", "Tags": _tag_list(labels)}])
        except Exception as exc:
            if aws_code(exc) == "InvalidKeyPair.Duplicate":
                raise SdcloudError(
                    f"a key pair named {key_name} exists in {region} but is not tagged for sdcloud deployment "
                    f"{name!r}: delete it (`aws ec2 delete-key-pair --key-name {key_name} --region {region}`) "
                    "or pick another deployment name") from exc
            raise aws_error(exc, "importing the SSH key pair", region) from exc
        return key_name

    # --- create ----------------------------------------------------------------------------------
    def _run_params(self, spec, offer, image, az, subnet, sg, key_name, spot, labels) -> dict:  # noqa: PLR0917
        tags = dict(labels, Name=spec.name)
        tags[TAG_SSH_USER] = spec.ssh_user or catalog.DEFAULT_SSH_USER
        tags[TAG_GPU] = spec.gpu
        tag_specs = [{"ResourceType": "instance", "Tags": _tag_list(tags)},
                     {"ResourceType": "volume", "Tags": _tag_list(dict(labels, Name=spec.name))}]
        params = {
            "ImageId": image["ImageId"],
            "InstanceType": offer.machine_type,
            "MinCount": 1,
            "MaxCount": 1,
            "Placement": {"AvailabilityZone": az},
            "NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": subnet, "Groups": [sg],
                                   "AssociatePublicIpAddress": True, "DeleteOnTermination": True}],
            "BlockDeviceMappings": [{"DeviceName": image.get("RootDeviceName") or "/dev/sda1",
                                     "Ebs": {"VolumeSize": int(spec.disk_size_gb), "VolumeType": offer.disk_type,
                                             "DeleteOnTermination": True}}],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": tag_specs,
        }
        if key_name:
            params["KeyName"] = key_name
        if spot:
            # persistent + stop: a reclaimed instance is stopped, not terminated, so its disk survives
            # and `state: running` can start it again.
            options = {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"}
            if not offer.spot_stop:
                options = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
            tag_specs.append({"ResourceType": "spot-instances-request", "Tags": _tag_list(labels)})
        return params

    # --- placement hooks (the zone walk is base.Backend.create_instance) ---------------------------
    def placement_zones(self, spec: InstanceSpec) -> list:
        zones = self.candidate_zones(spec.zones)
        if not zones:
            raise SdcloudError("no zones to try: set `zones` (AWS regions and/or availability zones)")
        return zones

    def zone_region(self, zone: str) -> str:
        return region_of(zone)

    def offers_in_zone(self, zone: str, offer: catalog.Offering) -> str | None:
        key = (region_of(zone), offer.machine_type)
        if key not in self._offered:
            self._offered[key] = self.offered_zones(*key)
        return None if zone in self._offered[key] else f"{zone} does not offer {offer.machine_type}"

    def image_for(self, spec: InstanceSpec, zone: str) -> tuple:
        image = self.resolve_image(region_of(zone), spec)
        return image["ImageId"], image.get("Name")

    def prepare_placement(self, spec: InstanceSpec, offer: catalog.Offering) -> dict:
        # regions are prepared on their first try: a walk that succeeds in its first region touches no other
        return {"spec": spec, "offer": offer, "labels": managed_labels(spec.name, spec.labels), "regions": {},
                "throttled": set()}

    def _prepare_region(self, placement: dict, region: str) -> tuple:
        """(image, vpc, security group, key pair name) of `region`, made once per create."""
        if region not in placement["regions"]:
            spec, labels = placement["spec"], placement["labels"]
            image = self.resolve_image(region, spec)
            vpc = self._default_vpc(region)
            sg, _ = self.ensure_security_group(region, spec.name, labels)
            key_name = self.ensure_key_pair(region, spec.name, spec.ssh_public_key, labels) if spec.ssh_public_key else None
            placement["regions"][region] = (image, vpc, sg, key_name)
        return placement["regions"][region]

    def try_zone(self, placement: dict, zone: str, spot: bool, deadline: Deadline) -> Instance:
        spec, offer = placement["spec"], placement["offer"]
        region = region_of(zone)
        if region in placement["throttled"]:  # the on-demand pass after a throttled spot pass: the limit is the same
            raise ZoneRefused(Refusal(CODE_THROTTLED, f"EC2 throttled this account in {region} earlier in this run",
                                      "RequestLimitExceeded", scope=SCOPE_REGION, fix=throttle_fix(region),
                                      skipped=True))
        image, vpc, sg, key_name = self._prepare_region(placement, region)
        subnet = self._subnet(region, vpc, zone)
        if not subnet:
            raise ZoneRefused(Refusal(CODE_NO_NETWORK, f"no subnet in {zone} (create one: `aws ec2 create-default-subnet "
                                      f"--availability-zone {zone}`)", skipped=True))
        params = self._run_params(spec, offer, image, zone, subnet, sg, key_name, spot, placement["labels"])
        # throttling only, with backoff, never past the deadline; a refusal is raised
        res = retry(self.ec2(region, run=True).run_instances, sleep=lambda t: time.sleep(min(t, deadline.remaining())),
                    **params)
        return instance_from_aws(res["Instances"][0], region, disk_size_gb=int(spec.disk_size_gb))

    def classify_error(self, exc: Exception, placement: dict, zone: str, spot: bool):
        offer, region = placement["offer"], region_of(zone)
        code = aws_code(exc)
        if code in AWS_CAPACITY:
            return Refusal(CODE_NO_CAPACITY, aws_message(exc), code)
        if code in AWS_QUOTA:
            qcode, qname = catalog.aws_quota(offer, spot)
            return Refusal(CODE_QUOTA, aws_message(exc), code, scope=SCOPE_REGION, quota=f"{qcode} ({qname})",
                           fix=quota_help(qcode, qname, region, offer.vcpus))
        if is_aws_throttling(exc):  # per account and region: the region's other zones would be throttled too
            placement["throttled"].add(region)
            return Refusal(CODE_THROTTLED, f"throttled after retries: {aws_message(exc)}", code, scope=SCOPE_REGION,
                           fix=throttle_fix(region))
        return aws_error(exc, f"launching {offer.machine_type} in {zone}", region)

    # --- state changes ---------------------------------------------------------------------------
    def start_instance(self, instance: Instance, wait_timeout: int) -> Instance:
        deadline = Deadline(wait_timeout)
        if instance.state == STOPPING:
            instance = self.wait_for_state(instance, STOPPED, deadline)
        if instance.state == STOPPED:
            aws_call(self.ec2(instance.region).start_instances, f"starting {instance.id}", instance.region,
                     InstanceIds=[instance.id])
        return self.wait_for_state(instance, RUNNING, deadline, need_ip=True)

    def host_keys(self, instance: Instance, timeout: int) -> list:
        """The SSH host keys cloud-init printed on the serial console, "type base64" sorted; polls up to
        `timeout` s (the console is written a little after boot). [] when none appeared: an image
        without cloud-init, or console output not yet posted (Xen types post it minutes late)."""
        ec2 = self.ec2(instance.region)
        latest = True

        def probe():
            nonlocal latest
            while True:
                try:
                    res = aws_call(ec2.get_console_output, f"reading the console output of {instance.id}",
                                   instance.region, InstanceId=instance.id, **({"Latest": True} if latest else {}))
                except SdcloudError as exc:
                    code = exc.details.get("code")
                    if latest and code in ("UnsupportedOperation", "InvalidParameterCombination", "InvalidParameterValue"):
                        latest = False  # not a Nitro type: only the buffered output exists
                        continue
                    if code in ("UnauthorizedOperation", "AccessDenied"):
                        return True, [], ""  # no ec2:GetConsoleOutput: the caller warns, the first connection trusts
                    raise
                keys = console_host_keys(res.get("Output") or "")
                return bool(keys), keys, "no host keys on the console yet"

        return wait_for(probe, Deadline(timeout), f"the host keys of {instance.id}", quiet=True) or []

    def stop_instance(self, instance: Instance, wait_timeout: int) -> Instance:
        deadline = Deadline(wait_timeout)
        if instance.state in (RUNNING, PENDING):
            if instance.state == PENDING:
                instance = self.wait_for_state(instance, RUNNING, deadline)
            aws_call(self.ec2(instance.region).stop_instances, f"stopping {instance.id}", instance.region,
                     InstanceIds=[instance.id])
        return self.wait_for_state(instance, STOPPED, deadline)

    def delete_instance(self, instance: Instance, wait_timeout: int) -> None:
        self._delete_instance(instance, Deadline(wait_timeout))

    def _delete_instance(self, instance: Instance, deadline: Deadline) -> None:
        ec2 = self.ec2(instance.region)
        d = self._get(instance)
        if d and d.get("SpotInstanceRequestId"):
            # a persistent spot request would launch a replacement: cancel it first
            aws_call(ec2.cancel_spot_instance_requests, "cancelling the spot request", instance.region,
                     SpotInstanceRequestIds=[d["SpotInstanceRequestId"]])
        if d and d.get("State", {}).get("Name") != "terminated":  # a spot interruption may have terminated it
            aws_call(ec2.terminate_instances, f"terminating {instance.id}", instance.region, InstanceIds=[instance.id])
        self.wait_for_state(instance, TERMINATED, deadline, gone_ok=True)

    def delete_instance_extras(self, name: str, wait_timeout: int) -> list:
        deleted = []
        for region in self.regions:
            for res in self._list_region(region, name):
                if res.kind in (KIND_KEY_PAIR, KIND_FIREWALL, KIND_SPOT_REQUEST):
                    deleted.append(res)
        self.delete_resources(deleted, wait_timeout)
        return deleted

    # --- firewall (security group) ---------------------------------------------------------------
    def _firewall_from_sg(self, sg: dict, region: str) -> Firewall:
        pairs, exact = set(), True
        for perm in sg.get("IpPermissions", []):
            if perm.get("IpProtocol") != "tcp" or perm.get("FromPort") != perm.get("ToPort"):
                exact = False
                continue
            if perm.get("Ipv6Ranges") or perm.get("UserIdGroupPairs") or perm.get("PrefixListIds"):
                exact = False
            for r in perm.get("IpRanges", []):
                pairs.add((int(perm["FromPort"]), r["CidrIp"]))
        ports = sorted({p for p, _ in pairs})
        sources = sorted({c for _, c in pairs})
        if pairs != {(p, c) for p in ports for c in sources}:
            exact = False
        return Firewall(name=sg.get("GroupName"), provider=PROVIDER, id=sg["GroupId"], ports=ports,
                        source_ranges=sources, region=region, labels=_tags_dict(sg.get("Tags")), exact=exact)

    def get_firewall(self, name: str) -> Firewall | None:
        for region in self.regions:
            sg = self._find_sg(region, name)
            if sg:
                return self._firewall_from_sg(sg, region)
        return None

    def create_firewall(self, spec: FirewallSpec) -> Firewall:
        inst = None
        for region in self.regions:
            found = _describe_instances(self.ec2(region), region, spec.name)
            if found:
                inst = found[0]
                break
        region = inst.region if inst else self.regions[0]
        sg_id, _ = self.ensure_security_group(region, spec.name, managed_labels(spec.name, spec.labels))
        current = self._firewall_from_sg(self._find_sg(region, spec.name), region)
        fw = self.update_firewall(current, spec)
        if inst:
            self._attach_sg(inst, sg_id)
        return fw

    def _attach_sg(self, inst: Instance, sg_id: str) -> None:
        d = self._get(inst)
        eni = (d or {}).get("NetworkInterfaces") or []
        if not eni:
            return
        groups = [g["GroupId"] for g in eni[0].get("Groups", [])]
        if sg_id not in groups:
            aws_call(self.ec2(inst.region).modify_network_interface_attribute, "attaching the security group",
                     inst.region, NetworkInterfaceId=eni[0]["NetworkInterfaceId"], Groups=[*groups, sg_id])

    def update_firewall(self, current: Firewall, spec: FirewallSpec) -> Firewall:
        region = current.region
        ec2 = self.ec2(region)
        res = aws_call(ec2.describe_security_groups, "reading the security group", region, GroupIds=[current.id])
        sg = res["SecurityGroups"][0]
        want = {(int(p), c) for p in spec.ports for c in spec.source_ranges}
        revoke = []
        have = set()
        for perm in sg.get("IpPermissions", []):
            keep_ranges = []
            for r in perm.get("IpRanges", []):
                key = (perm.get("FromPort"), r["CidrIp"])
                if perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == perm.get("ToPort") and key in want:
                    have.add(key)
                    keep_ranges.append(r)
            extra = {k: v for k, v in perm.items() if k in ("IpProtocol", "FromPort", "ToPort")}
            stale = [r for r in perm.get("IpRanges", []) if r not in keep_ranges]
            others = {k: perm[k] for k in ("Ipv6Ranges", "UserIdGroupPairs", "PrefixListIds") if perm.get(k)}
            if stale or others:
                revoke.append(dict(extra, IpRanges=[{"CidrIp": r["CidrIp"]} for r in stale], **others))
        if revoke:
            aws_call(ec2.revoke_security_group_ingress, "removing old security group rules", region,
                     GroupId=current.id, IpPermissions=revoke)
        add = sorted(want - have)
        if add:
            by_port: dict = {}
            for port, cidr in add:
                by_port.setdefault(port, []).append({"CidrIp": cidr, "Description": "sdcloud operator"})
            aws_call(ec2.authorize_security_group_ingress, "adding security group rules", region,
                     GroupId=current.id,
                     IpPermissions=[{"IpProtocol": "tcp", "FromPort": p, "ToPort": p, "IpRanges": rs}
                                    for p, rs in sorted(by_port.items())])
        res = aws_call(ec2.describe_security_groups, "reading the security group", region, GroupIds=[current.id])
        return self._firewall_from_sg(res["SecurityGroups"][0], region)

    def delete_firewall(self, current: Firewall) -> None:
        self._delete_sg(current.region, current.id, 120)

    def _delete_sg(self, region: str, sg_id: str, wait_timeout: int) -> None:
        ec2 = self.ec2(region)
        # detach from instances still using it (AWS refuses to delete a group in use)
        res = aws_call(ec2.describe_network_interfaces, "finding users of the security group", region,
                       Filters=[{"Name": "group-id", "Values": [sg_id]}])
        for eni in res.get("NetworkInterfaces", []):
            groups = [g["GroupId"] for g in eni.get("Groups", []) if g["GroupId"] != sg_id]
            if not groups:
                vpc = eni.get("VpcId")
                default = aws_call(ec2.describe_security_groups, "finding the default security group", region,
                                   Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                            {"Name": "group-name", "Values": ["default"]}])
                groups = [g["GroupId"] for g in default.get("SecurityGroups", [])][:1]
            if groups:
                aws_call(ec2.modify_network_interface_attribute, "detaching the security group", region,
                         NetworkInterfaceId=eni["NetworkInterfaceId"], Groups=groups)
        tries = max(2, int(wait_timeout // 10) or 2)
        aws_call(ec2.delete_security_group, f"deleting security group {sg_id}", region,
                 retry_on={"DependencyViolation"}, tries=tries, GroupId=sg_id)

    # --- sweep -----------------------------------------------------------------------------------
    def _list_region(self, region: str, deployment: str | None) -> list:
        ec2 = self.ec2(region)
        filters = _tag_filters(deployment)
        out = []

        def res(kind, rid, name, location, tags, state=None):  # noqa: PLR0917 - local shorthand
            out.append(Resource(kind, PROVIDER, rid, name, location, _tags_dict(tags), state))

        spots = aws_call(ec2.describe_spot_instance_requests, "listing spot requests", region,
                         Filters=[*filters, {"Name": "state", "Values": ["open", "active", "disabled"]}])
        for s in spots.get("SpotInstanceRequests", []):
            res(KIND_SPOT_REQUEST, s["SpotInstanceRequestId"], s.get("InstanceId"), region, s.get("Tags"),
                s.get("State"))
        for inst in _describe_instances(ec2, region, deployment, states=[*LIVE_STATES, "shutting-down"]):
            out.append(Resource(KIND_INSTANCE, PROVIDER, inst.id, inst.name, inst.zone, inst.labels, inst.state))
        addrs = aws_call(ec2.describe_addresses, "listing elastic IPs", region, Filters=filters)
        for a in addrs.get("Addresses", []):
            res(KIND_ADDRESS, a.get("AllocationId") or a["PublicIp"], a.get("PublicIp"), region, a.get("Tags"),
                "in-use" if a.get("AssociationId") else "available")
        vols = aws_call(ec2.describe_volumes, "listing volumes", region, Filters=filters)
        for v in vols.get("Volumes", []):
            res(KIND_DISK, v["VolumeId"], _tags_dict(v.get("Tags")).get("Name"), v.get("AvailabilityZone", region),
                v.get("Tags"), v.get("State"))
        sgs = aws_call(ec2.describe_security_groups, "listing security groups", region, Filters=filters)
        for g in sgs.get("SecurityGroups", []):
            res(KIND_FIREWALL, g["GroupId"], g.get("GroupName"), region, g.get("Tags"))
        kps = aws_call(ec2.describe_key_pairs, "listing key pairs", region, Filters=filters)
        for k in kps.get("KeyPairs", []):
            res(KIND_KEY_PAIR, k["KeyName"], k["KeyName"], region, k.get("Tags"))
        out.extend(self._tagged_elsewhere(region, deployment))
        return out

    def _tagged_elsewhere(self, region: str, deployment: str | None) -> list:
        """Every other resource carrying the deployment's tags in `region`, of any service, through the Resource
        Groups Tagging API (GetResources with TagFilters,
        https://docs.aws.amazon.com/resourcegroupstagging/latest/APIReference/API_GetResources.html): a snapshot
        a backup policy copied the volume's tags to, an AMI, a bucket. Kinds the EC2 listings cover are skipped."""
        tagging = self._clients.get(("tagging", region))
        if tagging is None:
            tagging = self._clients[("tagging", region)] = aws_client("resourcegroupstaggingapi", region,
                                                                       self.endpoint_url, self.profile)
        tag_filters = [{"Key": LABEL_MANAGED, "Values": ["true"]}]
        if deployment:
            tag_filters.append({"Key": LABEL_DEPLOYMENT, "Values": [deployment]})
        try:
            pages = aws_call(tagging.get_paginator("get_resources").paginate(TagFilters=tag_filters).build_full_result,
                             "listing tagged resources (tag:GetResources)", region)
        except SdcloudError as err:
            if err.details.get("code") in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation"):
                raise SdcloudError(f"cannot list what carries the deployment's tags in {region}: the credentials lack "
                                   "tag:GetResources (Resource Groups Tagging API), which the teardown proof needs; "
                                   "grant it (see the README's AWS permissions)", code="AccessDenied") from err
            raise
        out = []
        for item in pages.get("ResourceTagMappingList", []):
            arn = item["ResourceARN"]
            service, rest = arn.split(":", 5)[2], arn.split(":", 5)[5]
            rtype, _, rid = rest.partition("/")
            if service == "ec2" and rtype in COVERED_ARN_TYPES:
                continue
            kind = ARN_KINDS.get(rtype, KIND_OTHER) if service == "ec2" else KIND_OTHER
            tags = _tags_dict(item.get("Tags"))
            out.append(Resource(kind, PROVIDER, rid if kind != KIND_OTHER else arn, tags.get("Name") or arn, region,
                                tags, None))
        return out

    def delete_hint(self, res: Resource) -> str:
        region = region_of(res.location)
        if res.kind == KIND_SNAPSHOT:
            return f"delete it (`aws ec2 delete-snapshot --snapshot-id {res.id} --region {region}`)"
        if res.kind == KIND_IMAGE:
            return (f"deregister it (`aws ec2 deregister-image --image-id {res.id} --region {region}`), then delete "
                    "its snapshots")
        return f"delete it in its service's console ({res.id})"

    def list_resources(self, deployment: str | None = None) -> list:
        out = []
        for region in self.regions:
            out.extend(self._list_region(region, deployment))
        return out

    def delete_resources(self, resources: list, wait_timeout: int) -> None:
        deadline = Deadline(wait_timeout)  # every instance's wait shares it: wait_timeout bounds the sweep
        order = {k: i for i, k in enumerate(DELETE_ORDER)}
        for res in sorted(resources, key=lambda r: order.get(r.kind, len(order))):
            if res.kind in KEPT_KINDS:
                continue  # never sdcloud's: cloud_resources names them with delete_hint
            region = region_of(res.location) if res.location != "global" else self.regions[0]
            ec2 = self.ec2(region)
            if res.kind == KIND_SPOT_REQUEST:
                aws_call(ec2.cancel_spot_instance_requests, "cancelling a spot request", region,
                         SpotInstanceRequestIds=[res.id])
            elif res.kind == KIND_INSTANCE:
                inst = Instance(name=res.name or res.id, provider=PROVIDER, id=res.id, zone=res.location,
                                region=region, state=res.state or RUNNING)
                self._delete_instance(inst, deadline)
            elif res.kind == KIND_ADDRESS:
                self._release_address(ec2, region, res)
            elif res.kind == KIND_DISK:
                self._delete_volume(ec2, region, res, wait_timeout)
            elif res.kind == KIND_FIREWALL:
                self._delete_sg(region, res.id, wait_timeout)
            elif res.kind == KIND_KEY_PAIR:
                aws_call(ec2.delete_key_pair, f"deleting key pair {res.id}", region, KeyName=res.id)

    def _release_address(self, ec2, region: str, res: Resource) -> None:
        found = aws_call(ec2.describe_addresses, "reading an elastic IP", region,
                         Filters=[{"Name": "allocation-id", "Values": [res.id]}])
        for a in found.get("Addresses", []):
            if a.get("AssociationId"):
                aws_call(ec2.disassociate_address, "disassociating an elastic IP", region,
                         AssociationId=a["AssociationId"])
        aws_call(ec2.release_address, f"releasing elastic IP {res.name}", region, AllocationId=res.id)

    def _delete_volume(self, ec2, region: str, res: Resource, wait_timeout: int) -> None:
        found = aws_call(ec2.describe_volumes, "reading a volume", region,
                         Filters=[{"Name": "volume-id", "Values": [res.id]}])
        vols = found.get("Volumes", [])
        if not vols:
            return  # deleted with its instance (DeleteOnTermination)
        if vols[0].get("State") == "in-use":
            aws_call(ec2.detach_volume, f"detaching volume {res.id}", region, VolumeId=res.id, Force=True)
        tries = max(2, int(wait_timeout // 10) or 2)
        aws_call(ec2.delete_volume, f"deleting volume {res.id}", region, retry_on={"VolumeInUse"}, tries=tries,
                 VolumeId=res.id)
