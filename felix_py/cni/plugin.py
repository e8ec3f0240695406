"""The CNI commands: ADD, DEL, CHECK, STATUS and GC for one network configuration.

An attachment is keyed the way the spec asks, by (network name, container id, interface):
its IPAM handle is ``<network>.<container id>.<ifname>`` and its endpoint is
``<host>/<orchestrator>/<container id>/<ifname>``.  ADD allocates, plugs the veth in and
registers the endpoint, in that order, and undoes what it did when a later step fails; DEL
undoes all of it in the reverse order and succeeds when parts are already gone.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from functools import cached_property

from felix_py import model
from felix_py.cni import link, spec
from felix_py.cni.spec import CniError, Env, NetConf
from felix_py.datastore.client import (Conflict, DatastoreUnavailable, EtcdClient, TlsFiles,
                                       connect)
from felix_py.datastore.keys import EndpointId, KeyLayout
from felix_py.datastore.registration import NotFound, Registry
from felix_py.ipam import (AddressInUse, HandleInUse, Ipam, IpamError, NoPool,
                           PoolExhausted)
from felix_py.ipam.allocator import ATTR_ENDPOINT, ATTR_HOST

log = logging.getLogger(__name__)

# Facts recorded with each allocation, so that GC (CNI's and felixctl's) finds its owner.
ATTR_NETWORK = "network"
ATTR_CONTAINER = "container"
ATTR_IFNAME = "ifname"


def handle_id(network: str, container_id: str, ifname: str) -> str:
    return f"{network}.{container_id}.{ifname}"


def default_profile(name: str) -> model.ProfileRules:
    """Calico's CNI profile for a network: members reach each other, go out freely."""
    return model.ProfileRules(inbound_rules=[model.Rule(action="allow", src_tag=name)],
                              outbound_rules=[model.Rule(action="allow")])


class Plugin:
    def __init__(self, env: Env, conf: NetConf, client: EtcdClient | None = None):
        self.env = env
        self.conf = conf
        self._client = client
        self.hostname = conf.hostname or socket.gethostname()
        self.layout = KeyLayout(conf.etcd_prefix)

    @cached_property
    def client(self) -> EtcdClient:
        if self._client is None:
            tls = TlsFiles(self.conf.etcd_ca_cert_file, self.conf.etcd_cert_file,
                           self.conf.etcd_key_file)
            self._client = connect(self.conf.etcd_endpoints, tls)
        return self._client

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.client, self.layout)

    @cached_property
    def ipam(self) -> Ipam:
        return Ipam(self.client, self.layout, self.hostname)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- identities ----------------------------------------------------------------------
    def endpoint_id(self, container_id: str, ifname: str) -> EndpointId:
        return EndpointId(self.hostname, self.conf.orchestrator, container_id, ifname)

    def handle(self, container_id: str, ifname: str) -> str:
        return handle_id(self.conf.name, container_id, ifname)

    # -- ADD -----------------------------------------------------------------------------
    def add(self) -> dict:
        env, conf = self.env, self.conf
        request = spec.container_request(conf, env)
        eid = self.endpoint_id(env.container_id, env.ifname)
        host_if = link.host_ifname(eid, conf.interface_prefix)
        handle = self.handle(env.container_id, env.ifname)
        if not link.netns_exists(env.netns):
            raise CniError(spec.UNKNOWN_CONTAINER,
                           f"network namespace {env.netns} does not exist")
        if self.client.get(self.layout.endpoint(eid)) is not None:
            raise CniError(spec.ALREADY_ATTACHED,
                           f"container {env.container_id} is already attached to network "
                           f"{conf.name} as {env.ifname} (endpoint {eid}); DEL it first")
        profiles = request.profiles if request.profiles is not None else [conf.name]
        attrs = {ATTR_ENDPOINT: str(eid), ATTR_NETWORK: conf.name,
                 ATTR_CONTAINER: env.container_id, ATTR_IFNAME: env.ifname}

        ips = self._allocate(handle, request.ips, attrs)
        attached = None
        try:
            ipv4 = [ip for ip in ips if ipaddress.ip_address(ip).version == 4]
            ipv6 = [ip for ip in ips if ipaddress.ip_address(ip).version == 6]
            attached = link.create(host_if, env.netns, env.ifname, ipv4, ipv6, conf.mtu,
                                   request.mac)
            if request.profiles is None:
                self._ensure_default_profile()
            endpoint = {"state": "active", "name": host_if, "mac": attached.container_mac,
                        "profile_ids": profiles,
                        "ipv4_nets": [f"{ip}/32" for ip in ipv4],
                        "ipv6_nets": [f"{ip}/128" for ip in ipv6],
                        "labels": request.labels}
            try:
                self.registry.register_endpoint(eid, endpoint, create_only=True)
            except Conflict:
                raise CniError(spec.ALREADY_ATTACHED, f"endpoint {eid} appeared while this "
                                                      "ADD ran; DEL the container first")
        except BaseException:
            self._undo_add(host_if if attached else None, handle)
            raise
        log.info("ADD %s: %s on %s", eid, ", ".join(ips), host_if)
        interfaces = [{"name": host_if, "mac": link.HOST_MAC},
                      {"name": env.ifname, "mac": attached.container_mac, "sandbox": env.netns}]
        result_ips = [{"address": f"{ip}/{32 if ip in ipv4 else 128}", "interface": 1}
                      for ip in ips]
        return spec.result(conf.cniVersion, interfaces, result_ips,
                           link.routes_for(ipv4, ipv6), conf.dns)

    def _allocate(self, handle: str, static: list[str], attrs: dict[str, str]) -> list[str]:
        ipam_conf = self.conf.ipam
        try:
            if static:
                got: list[str] = []
                try:
                    for ip in static:
                        got.append(self.ipam.assign_ip(ip, handle, attrs, exclusive=not got))
                except BaseException:
                    self.ipam.release_ips(got, handle_id=handle)
                    raise
                return got
            if not (ipam_conf.assign_ipv4 or ipam_conf.assign_ipv6):
                raise CniError(spec.INVALID_CONFIG, "ipam assigns neither IPv4 nor IPv6; set "
                                                    "assign_ipv4 or assign_ipv6")
            return self.ipam.auto_assign(
                handle, num4=int(ipam_conf.assign_ipv4), num6=int(ipam_conf.assign_ipv6),
                attrs=attrs, pools4=ipam_conf.ipv4_pools or None,
                pools6=ipam_conf.ipv6_pools or None, exclusive=True)
        except HandleInUse:
            raise CniError(spec.ALREADY_ATTACHED,
                           f"container {self.env.container_id} already holds addresses in "
                           f"network {self.conf.name} (handle {handle}); DEL it first") from None
        except (PoolExhausted, AddressInUse) as e:
            raise CniError(spec.IPAM_EXHAUSTED, str(e)) from None
        except NoPool as e:
            raise CniError(spec.INVALID_CONFIG, str(e)) from None
        except IpamError as e:
            raise CniError(spec.INVALID_CONFIG, str(e)) from None

    def _ensure_default_profile(self) -> None:
        name = self.conf.name
        if not self.registry.profile_exists(name):
            try:
                self.registry.set_profile(name, default_profile(name), tags=[name])
            except Conflict:
                pass                    # created by a concurrent ADD: the same profile

    def _undo_add(self, host_if: str | None, handle: str) -> None:
        """Give back what a failed ADD took; log (never raise) what cannot be undone."""
        if host_if:
            try:
                link.delete(host_if)
            except Exception as e:
                log.error("failed ADD: could not remove %s: %s", host_if, e)
        try:
            self.ipam.release_by_handle(handle)
        except Exception as e:
            log.error("failed ADD: could not release handle %s (felixctl ipam gc will): %s",
                      handle, e)

    # -- DEL -----------------------------------------------------------------------------
    def delete(self) -> None:
        self.teardown(self.env.container_id, self.env.ifname)

    def teardown(self, container_id: str, ifname: str) -> None:
        """Remove endpoint, veth and addresses of one attachment; what is gone is skipped.
        The veth goes even when etcd is unreachable; the error then asks to try again."""
        eid = self.endpoint_id(container_id, ifname)
        host_if = link.host_ifname(eid, self.conf.interface_prefix)
        unavailable = None
        try:
            self.registry.remove_endpoint(eid)
        except NotFound:
            pass
        except DatastoreUnavailable as e:
            unavailable = e
        link.delete(host_if)
        if unavailable:
            raise unavailable
        freed = self.ipam.release_by_handle(self.handle(container_id, ifname))
        log.info("DEL %s: released %s", eid, ", ".join(freed) or "nothing")

    # -- CHECK ---------------------------------------------------------------------------
    def check(self) -> None:
        env = self.env
        expected = spec.expected_from(self.conf.prevResult, env.ifname, env.netns)
        eid = self.endpoint_id(env.container_id, env.ifname)
        host_if = expected.host_ifname or link.host_ifname(eid, self.conf.interface_prefix)
        if not link.netns_exists(env.netns):
            raise CniError(spec.UNKNOWN_CONTAINER, f"network namespace {env.netns} is gone")
        problems = link.check(host_if, env.netns, env.ifname, expected.container_mac,
                              expected.addresses, expected.routes)
        want = sorted(str(ipaddress.ip_interface(a).ip) for a in expected.addresses)
        try:
            endpoint = self.registry.get_endpoint(eid)
        except NotFound:
            problems.append(f"endpoint {eid} is not registered")
        else:
            if sorted(endpoint.addresses) != want:
                problems.append(f"endpoint {eid} has addresses {endpoint.addresses}, "
                                f"expected {want}")
            if endpoint.name != host_if:
                problems.append(f"endpoint {eid} names interface {endpoint.name}, "
                                f"expected {host_if}")
        held = self.ipam.ips_by_handle(self.handle(env.container_id, env.ifname))
        for ip in want:
            if ip not in held:
                problems.append(f"address {ip} is not held in IPAM for this container")
        if problems:
            raise CniError(spec.CHECK_FAILED, f"attachment of {env.container_id} to "
                                              f"{self.conf.name} is broken: "
                                              + "; ".join(problems))

    # -- STATUS and GC (spec 1.1.0) ------------------------------------------------------
    def status(self) -> None:
        try:
            self.client.ping()
        except DatastoreUnavailable as e:
            raise CniError(spec.NOT_AVAILABLE, str(e)) from None
        ipam_conf = self.conf.ipam
        for version, wanted, only in ((4, ipam_conf.assign_ipv4, ipam_conf.ipv4_pools),
                                      (6, ipam_conf.assign_ipv6, ipam_conf.ipv6_pools)):
            if not wanted:
                continue
            try:
                pools = self.ipam.pools(version, only or None)
            except NoPool as e:
                raise CniError(spec.NOT_AVAILABLE, str(e)) from None
            if not pools:
                raise CniError(spec.NOT_AVAILABLE, f"no enabled IPv{version} pool; add one "
                                                   "with `felixctl pool add CIDR`")

    def gc(self) -> list[tuple[str, str]]:
        """Tear down this host's attachments to this network that the runtime no longer
        knows (``cni.dev/valid-attachments``); returns them."""
        valid = set()
        for item in self.conf.valid_attachments or []:
            if isinstance(item, dict):
                valid.add((item.get("containerID"), item.get("ifname")))
        stale = set()
        for alloc in self.ipam.allocations():
            a = alloc.attrs
            if a.get(ATTR_NETWORK) != self.conf.name or a.get(ATTR_HOST) != self.hostname:
                continue
            key = (a.get(ATTR_CONTAINER), a.get(ATTR_IFNAME))
            if None not in key and key not in valid:
                stale.add(key)
        for container_id, ifname in sorted(stale):
            self.teardown(container_id, ifname)
        return sorted(stale)
