"""Running the ``nft`` CLI: the one place an nft run becomes text or a one-line DataplaneError.

Shared by the filter (``firewall.py``, ``table inet meshd``) and the masquerade
(``masquerade.py``, ``table ip meshd-nat``); each names itself in its errors (``label``).
Why the CLI and not a library is said in ``firewall.py``.
"""

from __future__ import annotations

import asyncio
import shutil

from meshd.errors import DataplaneError

NFT_TIMEOUT = 15.0
"""Seconds one nft run may take; it is milliseconds normally, this only bounds a hung one."""


class NftRefused(DataplaneError):
    """nft ran and refused (syntax, a conflicting object, a missing table, no nf_tables)."""

    def __init__(self, label: str, detail: str) -> None:
        super().__init__(f"{label}: nft: {detail}")


async def run(args: list[str], stdin: str | None, *, label: str, netns: str | None = None) -> str:
    """``nft *args`` (inside ``/run/netns/<netns>`` if given) with ``stdin``; its stdout.

    Raises DataplaneError (one line, starting with ``label``) when nft is missing, hangs or
    cannot start, and NftRefused when it exits non-zero."""
    nft = shutil.which("nft")
    if nft is None:
        raise DataplaneError(f"{label}: nft not found (apt-get install nftables)")
    argv = [nft, *args]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise DataplaneError(f"{label}: cannot run {argv[0]}: {exc.strerror}") from None
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), NFT_TIMEOUT
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise DataplaneError(f"{label}: nft did not finish within {NFT_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        raise NftRefused(label, one_line(err.decode(errors="replace")))
    return out.decode()


def one_line(stderr: str) -> str:
    """nft's complaint in one line: the text after its first ``Error:``."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Error:") or ": Error:" in ln:
            return ln.split("Error:", 1)[1].strip()
    return lines[0] if lines else "failed without a message"


__all__ = ["NFT_TIMEOUT", "NftRefused", "one_line", "run"]
