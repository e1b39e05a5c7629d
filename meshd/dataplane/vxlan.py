"""vxlan backend: one VTEP device; per peer a neighbour, an FDB entry and a route.

Kernel objects:
  - device ``meshd.<vni>``: kind vxlan, VNI (default 1), UDP port (default 8472), nolearning,
    local = this node's underlay IP, link = underlay, MTU = underlay MTU - 50, MAC = this node's
    VTEP MAC (derived from its node id, so stable with no store; set at creation), address
    ``<this node's subnet network address>/32``, up.
  - per peer, in this order (flannel's; the route last, or the kernel ARPs for the gateway):
      neighbour  ``<peer.subnet network address> lladdr <peer.vtep_mac> nud permanent``
      FDB        ``<peer.vtep_mac> dst <peer.public_ip> self permanent``
      route      ``<peer.subnet> via <peer.subnet network address> dev meshd.<vni> onlink``
Neighbours and FDB entries are meshd's because the device is; routes carry proto 109.
Deleting the underlay device makes the kernel delete the VTEP: the reconciler recreates it.
"""

from __future__ import annotations

from meshd.dataplane.hostgw import ApplyResult, HostGwBackend
from meshd.dataplane.model import Plan
from meshd.dataplane.netlink import FdbEntry, NeighEntry


class VxlanBackend(HostGwBackend):
    name = "vxlan"

    async def apply_entries(self, plan: Plan, links: dict[str, int], res: ApplyResult) -> None:
        dev = next((d.name for d in plan.devices if d.kind == "vxlan"), None)
        index = links.get(dev) if dev else None
        if index is None or dev in res.failed_devices:
            if plan.neigh_set or plan.fdb_set or plan.route_add or plan.route_replace:
                res.failures.append(f"vxlan device {dev} is missing; peer entries not programmed")
            return
        nl = self.nl
        # Removals: routes first, so no packet is steered at a gateway that no longer resolves.
        await self.apply_routes("del", plan.route_del, links, res)
        neigh_del = [NeighEntry(n.dst, n.lladdr) for n in plan.neigh_del]
        fails = await nl.neighs_apply("del", index, neigh_del)
        self.record("neigh_del", len(neigh_del), fails, res)
        fdb_del = [FdbEntry(f.lladdr, f.dst) for f in plan.fdb_del]
        self.record("fdb_del", len(fdb_del), await nl.fdb_apply("del", index, fdb_del), res)
        # Additions: neighbour, FDB, then the route.
        neigh = [NeighEntry(n.dst, n.lladdr) for n in plan.neigh_set]
        self.record("neigh_set", len(neigh), await nl.neighs_apply("replace", index, neigh), res)
        fdb = [FdbEntry(f.lladdr, f.dst) for f in plan.fdb_set]
        self.record("fdb_set", len(fdb), await nl.fdb_apply("replace", index, fdb), res)
        await self.apply_routes("add", plan.route_add, links, res)
        await self.apply_routes("replace", plan.route_replace, links, res)
