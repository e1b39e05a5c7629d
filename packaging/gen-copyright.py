"""Print /usr/share/doc/meshd/copyright: meshd's licence, then each bundled distribution with its
licence expression and full licence texts, read from the dist-info directories pip installed."""

from __future__ import annotations

import sys
from email.parser import Parser
from pathlib import Path

COMMON = {"Apache-2.0": "/usr/share/common-licenses/Apache-2.0",
          "GPL-2.0-or-later": "/usr/share/common-licenses/GPL-2"}


def main(lib: Path) -> None:
    out = [
        "meshd: gossip-driven container network mesh",
        "",
        "Copyright: the meshd authors",
        "License: Apache-2.0",
        f" On Debian systems the full text is in {COMMON['Apache-2.0']}.",
        "",
        "The package bundles the following Python distributions in /usr/lib/meshd, unmodified",
        "(their metadata, licence files included, is in /usr/lib/meshd/*.dist-info).",
    ]
    for info in sorted(lib.glob("*.dist-info"), key=lambda p: p.name.lower()):
        meta = Parser().parsestr((info / "METADATA").read_text(encoding="utf-8"), headersonly=True)
        lic = meta.get("License-Expression") or meta.get("License") or ", ".join(
            c.rsplit("::", 1)[-1].strip()
            for c in meta.get_all("Classifier", []) if c.startswith("License ::")
        )
        out += ["", "-" * 78, f"{meta['Name']} {meta['Version']}", f"License: {lic}"]
        files = sorted(p for p in info.rglob("*") if p.is_file()
                       and p.name.upper().startswith(("LICENSE", "COPYING", "NOTICE")))
        for f in files:
            if f.name.endswith(tuple(COMMON)):
                out += ["", f"{f.name}: see {COMMON[f.name.split('.', 1)[1]]}"]
                continue
            out += ["", f"{f.name}:", ""]
            out += [line.rstrip() for line in f.read_text(encoding="utf-8").splitlines()]
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
