"""The control socket: a unix stream socket speaking one JSON request and one JSON response.

Request:  ``{"cmd": "<name>", ...arguments}`` followed by a newline.
Response: ``{"ok": true, "result": <any>}`` or ``{"ok": false, "error": "<one line>"}``, then the
server closes the connection. Commands (their typed arguments and replies are in protocol.py; the
daemon's side is meshd/service.py):

- ``peers``: list of members (the JSON that ``meshd peers --json`` prints)
- ``status``: this node, counters, drops by reason, data plane, filter
- ``leave``: broadcast ``left``, wait (bounded) until it spread, then the daemon exits
- ``update``: re-announce this node with a higher incarnation; ``{"incarnation", "at"}``
- ``keys.list``, ``keys.install`` (``key``: base64), ``keys.use`` (``key_id``: 32 hex digits),
  ``keys.remove`` (``key_id``): the cluster keyring, spread over gossip
- ``crl.install`` (``crl``: PEM text): a CA's revocation list, spread over gossip

Callers are identified by their peer credentials (SO_PEERCRED, SO_PEERGROUPS): root and the
daemon's own uid may run every command; members of ``control_group`` only the read-only ones
(``protocol.READ_ONLY``: peers, status, keys.list); anyone else nothing (server.py).
"""

MAX_REQUEST = 64 * 1024
