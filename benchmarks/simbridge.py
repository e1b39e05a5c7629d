"""The simulator's members on a real UDP socket: a `meshd.sim.Network` run in real time, whose
datagrams to any address that is not a simulated member are sealed with the real key and sent
through one socket, and whose socket receives, opened, are delivered to the member they were
sent to.

One socket serves every member. It is bound to ``0.0.0.0:<port>`` in a namespace where the
members' public IPs are local (``ip route add local 172.16.0.0/16 dev lo``, the kernel's
"AnyIP"): ``IP_PKTINFO`` names the address each datagram was sent to, so the member it is for,
and ``sendmsg`` with ``IP_PKTINFO`` sends from the member's own address, so the daemon sees each
member at its own ``public_ip:port``, as it would on a real network.

The simulator's clock is ``time.monotonic() - start``. When the members' work takes longer than
the time it simulates, the simulator falls behind: ``lag`` (the worst, seconds) says by how much,
and a benchmark must report it (a member that answers late looks slow to the real daemon).

Every member seals with a `Sealer` of its own node id, made on first use; the replay window and
the addressing checks are the real ones. The members themselves run in the simulator as usual
(`Network.deliver` applies its addressing checks too).
"""

from __future__ import annotations

import collections
import heapq
import math
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

import msgpack

from meshd.gossip import messages
from meshd.gossip.messages import MsgType
from meshd.gossip.queue import retransmit_limit
from meshd.gossip.security import ANY, Keyring, OpenError, Sealer
from meshd.sim import Network

Addr = tuple[str, int]
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
CMSG_SPACE = socket.CMSG_SPACE(_PKTINFO.size)
SOCKBUF = 8 * 1024 * 1024
"""Socket buffers: a push-pull answer for 10,000 members arrives as one burst."""
MAX_SLEEP = 0.01
"""Longest wait for the socket between two runs of the simulator (seconds)."""


class Bridge:
    """Drives ``net`` in real time and joins it to ``sock`` (bound, ``IP_PKTINFO`` on)."""

    def __init__(
        self, net: Network, sock: socket.socket, keyring: Keyring, by_type: bool = True
    ) -> None:
        """``by_type``: count what the members send out by message type (``out.<Type>``)."""
        self.net = net
        self.sock = sock
        self.keyring = keyring
        self.port = sock.getsockname()[1]
        self.by_type = by_type
        self.start = time.monotonic() - net.now
        self.counters: collections.Counter[str] = collections.Counter()
        self.lag = 0.0
        """The most the simulator's clock fell behind real time, seconds."""
        self._sealers: dict[int, Sealer] = {}
        self._by_ip: dict[str, int] = {}
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._stop = threading.Event()
        self.before_deliver: Callable[[int, bytes, Addr, bytes, bytes], None] | None = None
        """Called with (member, payload, source address, sender node id, recipient node id or
        b"") before a datagram from the socket is handed to its member (`QuietMesh`)."""
        self.on_tick: Callable[[float], None] | None = None
        """Called with the simulator's clock on every turn of the loop (`QuietMesh`)."""
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        net.on_datagram = self._outbound

    # --- outside the simulator -------------------------------------------------------------------

    def clock(self) -> float:
        return time.monotonic() - self.start

    def behind(self) -> float:
        """How far the simulator's clock is behind real time now (callable from another thread:
        `lag` is only updated when a run of the simulator returns, and one run can take long)."""
        got = self.clock() - self.net.now
        self.lag = max(self.lag, got)
        return got

    def member(self, ip: str) -> int | None:
        if len(self._by_ip) != len(self.net.addrs):
            self._by_ip = {a[0]: i for i, a in enumerate(self.net.addrs) if a[1] == self.port}
        return self._by_ip.get(ip)

    def sealer(self, idx: int) -> Sealer:
        got = self._sealers.get(idx)
        if got is None:
            got = self._sealers[idx] = Sealer(self.keyring, self.net.nodes[idx].local.node_id)
        return got

    def _outbound(self, src: int, payload: bytes, addr: Addr, to: bytes) -> None:
        if self.member(addr[0]) is not None and addr[1] == self.port:
            return  # another simulated member: the simulator delivers it
        self.send(src, payload, addr, to)

    def send(self, src: int, payload: bytes, addr: Addr, to: bytes) -> None:
        """Seal ``payload`` as member ``src`` for ``to`` and send it from the member's address."""
        data = self.sealer(src).seal(payload, time.time(), to or ANY)
        if self.by_type:
            for msg in messages.decode(payload):
                self.counters[f"out.{type(msg).__name__}"] += 1
        pktinfo = _PKTINFO.pack(0, socket.inet_aton(self.net.addrs[src][0]), bytes(4))
        try:
            self.sock.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, addr)
        except OSError as exc:
            self.counters[f"send_error.{exc.errno}"] += 1
            return
        self.counters["out"] += 1
        self.counters["out_bytes"] += len(data)

    def _receive(self) -> int:
        """Hand every datagram waiting on the socket to its member; how many there were."""
        got = 0
        while True:
            try:
                data, anc, _flags, src = self.sock.recvmsg(65535, CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return got
            except OSError as exc:  # an ICMP error of an earlier send
                self.counters[f"recv_error.{exc.errno}"] += 1
                continue
            got += 1
            self.counters["in"] += 1
            self.counters["in_bytes"] += len(data)
            dst = next(
                (
                    socket.inet_ntoa(_PKTINFO.unpack(d)[2])
                    for lvl, typ, d in anc
                    if lvl == socket.IPPROTO_IP and typ == IP_PKTINFO
                ),
                None,
            )
            idx = None if dst is None else self.member(dst)
            if idx is None:
                self.counters["drop.no_member"] += 1
                continue
            sealer = self.sealer(idx)
            try:
                opened = sealer.open(data, time.time())
            except OpenError as exc:
                self.counters[f"drop.{exc.reason}"] += 1
                continue
            to = b"" if opened.to_any else sealer.local_id
            if self.before_deliver is not None:
                self.before_deliver(idx, opened.payload, (src[0], src[1]), opened.sender, to)
            self.net.deliver(idx, opened.payload, (src[0], src[1]), opened.sender, to)

    # --- running ---------------------------------------------------------------------------------

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the bridge's loop (the simulator is not thread-safe)."""
        self._calls.append(fn)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Until `stop`: advance the simulator to real time, deliver what the socket holds,
        wait for the socket until the next simulated event (at most MAX_SLEEP)."""
        net = self.net
        heap = net._heap  # noqa: SLF001 - the next event's time, to sleep until it
        while not self._stop.is_set():
            while self._calls:
                self._calls.popleft()()
            now = self.clock()
            net.run_until(now)
            if self.on_tick is not None:
                self.on_tick(now)
            got = self._receive()
            # A datagram that came in meanwhile waited this long (a member's full state is
            # encoded inside _receive: it counts too).
            self.lag = max(self.lag, self.clock() - now)
            if got:
                continue
            wait = MAX_SLEEP if not heap else min(MAX_SLEEP, heap[0][0] - self.clock())
            if wait > 0:
                select.select([self.sock], [], [], wait)


BROADCASTS = frozenset({MsgType.SUSPECT, MsgType.ALIVE, MsgType.DEAD, MsgType.KEY_OP, MsgType.CRL})
"""Message types a gossip round carries (nothing else rides alone between two members)."""
STATEFUL = (messages.PushPull, messages.SyncDigest)
"""Answers that depend on the member's table: it hears the mesh's news before it answers
(`QuietMesh.catch_up`). Not before an ack: catching up with 1,000 leaves costs the simulator
~0.13 s per member at 10,000 (the core's O(N) removal from its alive list, per leave)."""
SEQ_BASE = 1 << 31
"""Sequence numbers of the stand-in pings: far above any member's own (they start at 1)."""


class QuietMesh:
    """A mesh of N members of which only the traffic with the real daemon is simulated in full.

    A 10,000-member mesh simulated member by member costs the simulator seconds of CPU per
    second of mesh (10,000 probes a second; one broadcast is ~200,000 datagrams), more than real
    time on the project machine. Here every member is still a real GossipNode with its own
    record and key, holding the whole converged table, and answers whatever the daemon sends it
    at once with its real core (pings, indirect pings, push-pulls, digests, gossip); what the
    members do among themselves is modelled instead:

    * **Members do not probe each other.** All but ``speakers`` members are asleep
      (`Network.sleep`: no timers). The probes the mesh sends the daemon (each member probes
      everyone once per N probe intervals, so ~1 a second) are stand-in pings: a random asleep
      member sends the daemon a real `Ping` (its own name and address, sealed with its key)
      at exponential intervals of mean ``probe_interval * N / (N - speakers)``, with nothing
      piggybacked; the daemon's ack reaches that member's core (``ack.unmatched`` there).
    * **News spreads by a model, delivered lazily.** Every broadcast that enters the mesh (a
      member's leave, what the daemon gossips or announces to any member, a member's
      refutation) becomes an *item*; member ``i`` hears every item ``delay[i]`` after it was
      born, ``delay`` drawn once per member from a push epidemic with fanout gossip_nodes + 1
      per hop of gossip_interval / 2 (all members within ~0.7 s at N = 10,000). It is delivered
      (as real gossip datagrams to the member's core) only when it matters: before a member
      answers the daemon's push-pull or digest, to the member a suspicion or death is about (so
      it refutes), and to the speakers (at most gossip_nodes datagrams a gossip_interval). An
      ack therefore carries only what the member heard from the daemon itself.
    * **Speakers carry the mesh's gossip to the daemon.** ``speakers`` random members run all
      their timers (probing each other and the asleep members, who answer). A gossip datagram
      from one member to another is not delivered (the lazy delivery stands for it); a speaker's
      is sent to the daemon instead with probability ``(N / speakers - 1) / (N - 1)``, so the
      daemon receives what the mesh's N members gossiping would send it, ``gossip_nodes`` per
      gossip_interval while they have news, each datagram a real one built by a speaker's
      queue from what it heard (as every member's, after the epidemic).
    * A member that leaves (`leave`) sends its leave as usual, then is gone (crashed) once the
      broadcast would have been sent its retransmit count.

    An asleep member runs no gossip rounds, so news handed to it late would stay in its queue
    and ride on its every answer; `catch_up` counts the datagrams it would have sent since it
    heard the news against its queue (`GossipNode.spend_gossip`).

    Not modelled: the members' own anti-entropy rounds with the daemon (one every
    push_pull_interval * scale / ... ~300 s at N = 10,000; the daemon's own rounds are real),
    news that members learn from each other's probes (none in a quiet mesh), loss, and a relay's
    nack for a target that is up but slow (an asleep relay runs no timers: `_nack_later` sends
    its nack only for a target that is gone).
    """

    def __init__(self, bridge: Bridge, speakers: int, seed: int) -> None:
        net = self.net = bridge.net
        self.bridge = bridge
        cfg = net.config
        n = len(net.nodes)
        if not 0 < speakers < n:
            raise ValueError(f"speakers must be 1..{n - 1}")
        self.rng = random.Random(f"quiet-{seed}")
        hop, fan = cfg.gossip_interval / 2, cfg.gossip_nodes + 1
        self.delay = [
            hop * math.log1p(self.rng.random() * (n - 1)) / math.log(fan) for _ in range(n)
        ]
        self.items: list[tuple[float, int, bytes]] = []
        """(born, member it entered the mesh at, the encoded message), in birth order."""
        self._keys: set[tuple[int, str, int]] = set()
        self.heard = [0] * n
        """How many items (a prefix of ``items``) member i was handed."""
        self._inc = [node.local.incarnation for node in net.nodes]
        self._names: dict[str, int] = {}
        self.speakers = set(self.rng.sample(range(n), speakers))
        self.redirect = (n / speakers - 1) / (n - 1)
        self.counters = bridge.counters
        self.daemon: tuple[Addr, bytes, str] | None = None
        """The daemon's address, node id and name, from what it sent."""
        self._timed: list[tuple[float, int, Callable[[], None]]] = []
        self._tseq = 0
        self._ping_mean = cfg.probe_interval * n / (n - speakers)
        self._next_ping = math.inf
        self._seq = SEQ_BASE
        self._next_catch_up = 0.0
        self._budget = cfg.max_datagram - messages.ENVELOPE_RESERVE - messages.DATAGRAM_OVERHEAD
        self._drain = (
            math.ceil(retransmit_limit(cfg.retransmit_mult, n) / cfg.gossip_nodes)
            * cfg.gossip_interval
        )
        for i in range(n):
            if i not in self.speakers:
                net.sleep(i)
        net.intercept = self._intercept
        bridge.before_deliver = self._before_deliver
        bridge.on_tick = self._tick

    # --- items ---------------------------------------------------------------------------------

    def _born(self, msg: messages.Message, at: int, now: float) -> None:
        if isinstance(msg, messages.Alive):
            key = (MsgType.ALIVE, msg.record.name, msg.record.incarnation)
        elif isinstance(msg, messages.Dead | messages.Suspect):
            key = (MsgType.DEAD if isinstance(msg, messages.Dead) else MsgType.SUSPECT,
                   msg.node, msg.incarnation)  # fmt: skip
        else:
            return
        if key in self._keys:
            return
        self._keys.add(key)
        self.items.append((now, at, messages.encode(msg)))
        self.counters["model.items"] += 1
        if key[0] != MsgType.ALIVE:
            subject = self._by_name.get(key[1])
            if subject is not None and subject != at:  # it hears of it and refutes, if up
                self.after(self.delay[subject], lambda: self.catch_up(subject))

    @property
    def _by_name(self) -> dict[str, int]:
        got = self._names
        if len(got) != len(self.net.nodes):
            got = self._names = {node.local.name: i for i, node in enumerate(self.net.nodes)}
        return got

    def catch_up(self, i: int, most: int = 0) -> None:
        """Hand member ``i`` the items it has heard of by now, as gossip datagrams (``most``:
        at most this many datagrams' worth; 0: no limit)."""
        net, items = self.net, self.items
        if net.down[i]:
            return
        now, start, k = net.now, self.heard[i], self.heard[i]
        limit = now - self.delay[i]
        room = most * self._budget if most else math.inf
        while k < len(items) and items[k][0] <= limit and room >= len(items[k][2]):
            room -= len(items[k][2])
            k += 1
        if k == start:
            return
        self.heard[i] = k
        node = net.nodes[i]
        me = node.local.node_id
        parts: list[bytes] = []
        room = self._budget
        src = -1
        for _, at, payload in items[start:k]:
            if at == i:
                continue  # it told the mesh itself
            if parts and len(payload) > room:
                self._hand(i, parts, src, me)
                parts, room = [], self._budget
            if not parts:
                src = at  # relayed, in the name of the first item's member
            parts.append(payload)
            room -= len(payload)
        if parts:
            self._hand(i, parts, src, me)
        self._harvest(i)
        if i in net.dormant:
            self._spend(i, now - (items[start][0] + self.delay[i]))

    def _spend(self, i: int, since: float) -> None:
        """What asleep member ``i`` heard ``since`` seconds ago it would have gossiped on meanwhile
        (gossip_nodes datagrams a gossip_interval): count those sends against its queue, so that
        it does not piggyback long-spread news on its answers to the daemon."""
        cfg = self.net.config
        takes = int(since / cfg.gossip_interval) * cfg.gossip_nodes
        if takes <= 0:
            return
        self.counters["model.spent"] += self.net.nodes[i].spend_gossip(takes)

    def _hand(self, i: int, parts: list[bytes], src: int, me: bytes) -> None:
        node = self.net.nodes[i]
        data = messages.pack_datagram(parts, node.protocol_minor)
        self.counters["model.delivered"] += 1
        self.net.deliver(i, data, self.net.addrs[src], self.net.nodes[src].local.node_id, me)

    def _harvest(self, i: int) -> None:
        """Member ``i`` refuted (a new incarnation): that enters the mesh too."""
        local = self.net.nodes[i].local
        if local.incarnation != self._inc[i]:
            self._inc[i] = local.incarnation
            if not local.left:
                self._born(messages.Alive(local), i, self.net.now)

    # --- hooks ---------------------------------------------------------------------------------

    def _before_deliver(self, i: int, payload: bytes, src: Addr, sender: bytes, to: bytes) -> None:
        try:
            msgs = messages.decode(payload)
        except messages.DecodeError:
            return  # the member counts it
        now = self.net.now
        answered = False
        for msg in msgs:
            if isinstance(msg, STATEFUL):
                answered = True
            if isinstance(msg, messages.Ping) and self.daemon is None:
                self.daemon = (src, sender, msg.source)
                self._next_ping = now + self.rng.expovariate(1 / self._ping_mean)
            if isinstance(msg, messages.PushPull):
                if self.daemon is None:
                    self.daemon = (src, sender, msg.sender.name)
                    self._next_ping = now + self.rng.expovariate(1 / self._ping_mean)
                # The member gossips the daemon's record on (state.py on_alive).
                self._born(messages.Alive(msg.sender), i, now)
            else:
                self._born(msg, i, now)
            if isinstance(msg, messages.IndirectPing) and msg.nack and i in self.net.dormant:
                self._nack_later(i, msg)
        if answered:
            self.catch_up(i)
        self.after(0.0, lambda: self._harvest(i))

    def _nack_later(self, i: int, msg: messages.IndirectPing) -> None:
        """An asleep relay runs no timers, so it would never nack: send its nack when the target
        cannot answer (it is gone), at the time its timer would (probe_timeout)."""
        target = self._by_name.get(msg.target)
        if target is None:
            return
        daemon = self.daemon

        def nack() -> None:
            if self.net.down[target] and daemon is not None and not self.net.down[i]:
                payload = messages.pack_datagram(
                    [messages.encode(messages.Nack(msg.seq))], self.net.nodes[i].protocol_minor
                )
                self.counters["model.relay_nack"] += 1
                self.bridge.send(i, payload, daemon[0], daemon[1])

        self.after(self.net.config.probe_timeout, nack)

    def _intercept(self, src: int, data: bytes, addr: Addr, to: bytes) -> bool:
        try:
            body = msgpack.unpackb(data, raw=False)[1]
            gossip = all(m[0] in BROADCASTS for m in body)
        except Exception:  # noqa: BLE001 - our own members' datagrams; anything odd is delivered
            return False
        if not gossip:
            return False
        daemon = self.daemon
        if src in self.speakers and daemon is not None and self.rng.random() < self.redirect:
            self.counters["model.redirected"] += 1
            self.bridge.send(src, data, daemon[0], daemon[1])
        return True

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self._tseq += 1
        heapq.heappush(self._timed, (self.net.now + delay, self._tseq, fn))

    def _tick(self, now: float) -> None:
        timed = self._timed
        while timed and timed[0][0] <= now:
            heapq.heappop(timed)[2]()
        if now >= self._next_catch_up:
            self._next_catch_up = now + self.net.config.gossip_interval
            # A speaker takes in news at most as fast as gossip brings it: gossip_nodes
            # datagrams a round (a member receives as many as it sends, on average).
            for s in self.speakers:
                self.catch_up(s, self.net.config.gossip_nodes)
        while now >= self._next_ping:
            self._next_ping += self.rng.expovariate(1 / self._ping_mean)
            self._stand_in_ping()

    def _stand_in_ping(self) -> None:
        daemon, net = self.daemon, self.net
        assert daemon is not None
        for _ in range(10):
            i = self.rng.randrange(len(net.nodes))
            if i not in self.speakers and not net.down[i] and not net.nodes[i].leaving:
                break
        else:
            return
        local = net.nodes[i].local
        self._seq += 1
        ping = messages.Ping(self._seq, daemon[2], local.name, local.addr)
        payload = messages.pack_datagram([messages.encode(ping)], net.nodes[i].protocol_minor)
        self.counters["model.stand_in_ping"] += 1
        self.bridge.send(i, payload, daemon[0], daemon[1])

    # --- acting --------------------------------------------------------------------------------

    def leave(self, i: int) -> None:
        """Member ``i`` leaves: its leave enters the mesh, and it is gone once sent."""
        net = self.net
        self.catch_up(i)
        net.leave(i)
        local = net.nodes[i].local
        self._inc[i] = local.incarnation
        self._born(messages.Dead(local.incarnation, local.name, local.name), i, net.now)
        self.after(self._drain, lambda: net.crash(i))
