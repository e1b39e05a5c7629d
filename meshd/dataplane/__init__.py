"""The kernel data plane: peer table -> desired state -> plan -> netlink.

``objects`` (kernel objects as values), ``backends`` (one module per backend, and the registry),
``model`` (desired state and diff) and ``prefix`` are pure and cheap to import: the CLI, config
validation and the daemon's peer view use them without root. ``apply``, ``reconciler``,
``underlay`` and ``firewall`` touch the kernel; ``netlink`` is the only module that speaks it.
"""
