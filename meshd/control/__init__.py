"""The control socket: a unix stream socket speaking one JSON request and one JSON response.

Request:  ``{"cmd": "<name>", ...arguments}`` followed by a newline.
Response: ``{"ok": true, "result": <any>}`` or ``{"ok": false, "error": "<one line>"}``, then the
server closes the connection. Commands: ``peers``, ``status``, ``leave``, ``keys.list``,
``keys.install`` (``key``), ``keys.use`` (``key_id``), ``keys.remove`` (``key_id``).
"""

MAX_REQUEST = 64 * 1024
