"""The shipped example config must stay loadable and must name every key the code knows."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from meshd.config import PER_FAMILY, Config, build, load_file
from meshd.gossip.config import GossipConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "meshd.toml"


def _keys() -> set[str]:
    """Every key: the Config fields, less the IPv6 halves of per-family keys (``subnet6`` is
    given as ``subnet``), and the [gossip] table's."""
    top = {f.name for f in fields(Config)} - {"gossip"} - set(PER_FAMILY.values())
    return top | {f.name for f in fields(GossipConfig)}


def test_example_documents_every_key_and_its_default(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    # uncomment every "# key = value" line (minus trailing comments) and load it
    lines = []
    for line in text.splitlines():
        m = re.match(r"^# ([a-z_0-9]+ = .*?)(\s+#.*)?$", line)
        lines.append(m.group(1) if m else line)
    uncommented = tmp_path / "meshd.toml"
    uncommented.write_text("\n".join(lines) + "\n")
    cfg = build(load_file(uncommented))
    assert cfg.subnet == "10.244.1.0/24"
    defaults = GossipConfig()
    for f in fields(GossipConfig):
        assert getattr(cfg.gossip, f.name) == getattr(defaults, f.name), f.name
    documented = set(re.findall(r"^# ([a-z_0-9]+) = ", text, re.M))
    known = _keys()
    assert known <= documented, known - documented


def test_configuration_reference_lists_every_key() -> None:
    ref = (EXAMPLE.parents[1] / "docs" / "configuration.md").read_text()
    known = _keys()
    missing = {k for k in known if f"| `{k}` |" not in ref}
    assert not missing, f"docs/configuration.md lacks {sorted(missing)}"
