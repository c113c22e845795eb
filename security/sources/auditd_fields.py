"""One raw auditd record: its header, its fields split as auparse splits them, and auparse-style interpretations.

Field splitting follows auparse, whose output for the upstream samples (``auparse/test/auparse_test.ref``) is
the test oracle: a record's fields are its ``key=value`` pairs in order, with ``type`` first; ``msg='...'``
of user-space records is opened and its pairs become fields of the record; words that are not pairs are
dropped (``user``, ``PAM:``, ``avc:``), except the AVC verdict and permissions, which auparse names
``seresult`` and ``seperms``. Values are kept raw: only the quoting of the format is removed (``"..."``, and
the ``(`` ``,`` ``)`` of old PAM messages), so ``tty=(none)`` stays ``(none)`` and a hex-encoded value stays hex.

Interpretations are added to the same flat record under the field's name in upper case, as auditd's own
``log_format = ENRICHED`` does after its 0x1D separator (SigmaHQ's auditd rules select ``SYSCALL: 'execve'``
that way). What is interpreted here, and only where the result differs from the raw value:
``arch`` (audit architecture -> ``x86_64``, ``aarch64``, ...), ``syscall`` (number -> name, x86_64 only: the
full table in ``auditd_syscalls``), ``exit`` (a negative errno -> ``EACCES(Permission denied)``), ids and
sessions equal to 4294967295 (-> ``unset``), and hex-encoded strings (``proctitle`` with its NUL-separated
argv joined by spaces, EXECVE ``aN`` including long arguments split in ``aN[i]`` pieces, ``name``, ``comm``,
``exe``, ``cwd``, ``acct``, ``cmd``). User and group names are not resolved: the host's passwd is not here.
Enriched input keeps its own upper-case values, which win over these.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from control_plane.core.clock import from_timestamp, rfc3339
from security.sources.auditd_syscalls import X86_64
from security.sources.base import Rejected

_HEADER = re.compile(
    r"(?:node=(?P<node>\S+) )?type=(?P<type>\S+) msg=audit\((?P<seconds>\d+)\.(?P<fraction>\d+):(?P<serial>\d+)\):"
)
_TOKEN = re.compile(r"""\(?(?P<key>[\w\-\[\]]+)=(?P<value>"[^"]*"|'[^']*'|\S*)|(?P<word>\{[^}]*\}|\S+)""")
_ENRICHED_SEPARATOR = "\x1d"
_HEX = re.compile(r"(?:[0-9A-F]{2})+")
_EXECVE_ARG = re.compile(r"a(?P<index>\d+)(?:\[(?P<piece>\d+)\])?")

UNSET_ID = "4294967295"
"""(u32)-1: an id or session that was never set (``auid`` of a daemon started at boot)."""

_ESCAPED = frozenset({"proctitle", "name", "comm", "exe", "cwd", "acct", "cmd"})
"""Untrusted strings that auditd writes quoted when safe and hex-encoded otherwise (plus EXECVE ``aN``)."""
_USER_IDS = {"auid", "uid", "euid", "suid", "fsuid", "ouid", "old-auid", "sauid"}
_GROUP_IDS = {"gid", "egid", "sgid", "fsgid", "ogid"}
_IDS = frozenset(_USER_IDS | _GROUP_IDS | {"ses", "old-ses"})
_ARCHES = {
    "c000003e": "x86_64",
    "40000003": "i386",
    "c00000b7": "aarch64",
    "40000028": "arm",
    "80000015": "ppc64",
    "c0000015": "ppc64le",
    "80000016": "s390x",
    "c00000f3": "riscv64",
}
_X86_64_ARCH = "c000003e"


@dataclass(frozen=True)
class AuditRecord:
    """One ``type=... msg=audit(...)`` line, split into raw fields and their decoded values."""

    node: str | None
    type: str
    seconds: int
    fraction: str
    serial: int
    fields: dict[str, str]
    """Raw values in record order, ``type`` first; a repeated key gets ``_2``, ``_3``... so nothing is lost."""
    decoded: dict[str, str]
    """Field name -> decoded text, for hex-encoded fields and for EXECVE arguments split in pieces."""

    @property
    def event_key(self) -> tuple[str, str, int]:
        """What auditd groups records by: node, timestamp and serial."""
        return (self.node or "", f"{self.seconds}.{self.fraction}", self.serial)

    @property
    def event_id(self) -> str:
        """``node:seconds.millis:serial``, or ``seconds.millis:serial`` when the host writes no ``node=``."""
        node, stamp, serial = self.event_key
        return f"{node}:{stamp}:{serial}" if node else f"{stamp}:{serial}"

    @property
    def timestamp(self) -> datetime:
        micros = int((self.fraction + "000000")[:6])
        return from_timestamp(self.seconds) + timedelta(microseconds=micros)

    def rfc3339(self) -> str:
        return rfc3339(self.timestamp)

    def text(self, name: str) -> str | None:
        """A field as readable text: decoded when it was hex-encoded or split, raw otherwise."""
        return self.decoded.get(name, self.fields.get(name))

    def number(self, name: str) -> int | None:
        value = self.fields.get(name)
        return int(value) if value is not None and value.lstrip("-").isdigit() else None

    def args(self) -> list[str]:
        """EXECVE argv, decoded, in order (``argc`` of them when the record says how many)."""
        count = self.number("argc")
        indexes = sorted({int(m["index"]) for key in self.fields if (m := _EXECVE_ARG.fullmatch(key))})
        if count is not None:
            indexes = [index for index in indexes if index < count]
        return [self.text(f"a{index}") or "" for index in indexes]

    def as_dict(self) -> dict[str, str]:
        """The flat record kept in ``auditd.records[]``: raw fields plus upper-case interpretations."""
        return self.fields | {key: value for key, value in interpret(self).items() if key not in self.fields}


def parse_record(text: str) -> AuditRecord:
    """Split one audit.log line; ``Rejected`` when it is not an audit record."""
    text = text.rstrip("\r\n")
    if not text.strip():
        raise Rejected("empty line")
    header = _HEADER.match(text)
    if header is None:
        if re.match(r"(?:node=\S+ )?type=\S+", text) is None:
            raise Rejected("not an audit record: no type= field at the start of the line")
        raise Rejected("not an audit record: no msg=audit(seconds.millis:serial) header after type=")
    body, _, enriched = text[header.end() :].partition(_ENRICHED_SEPARATOR)
    record_type = header["type"]
    fields: dict[str, str] = {"type": record_type}
    decoded: dict[str, str] = {}
    _split(body, record_type, fields, decoded)
    _split(enriched, record_type, fields, decoded)
    if record_type == "EXECVE":
        _join_pieces(fields, decoded)
    return AuditRecord(
        node=header["node"],
        type=record_type,
        seconds=int(header["seconds"]),
        fraction=header["fraction"],
        serial=int(header["serial"]),
        fields=fields,
        decoded=decoded,
    )


def _split(body: str, record_type: str, fields: dict[str, str], decoded: dict[str, str]) -> None:
    """auparse's field split of one record body (or of the text inside ``msg='...'``)."""
    for token in _TOKEN.finditer(body):
        key, value, word = token["key"], token["value"], token["word"]
        if key is None:
            if record_type in ("AVC", "USER_AVC") and word in ("denied", "granted"):
                _add(fields, "seresult", word)
            elif record_type in ("AVC", "USER_AVC") and word.startswith("{"):
                _add(fields, "seperms", ",".join(word.strip("{} ").split()))
            continue
        if key == "msg" and value.startswith("'"):
            _split(value.strip("'"), record_type, fields, decoded)
            continue
        quoted = len(value) > 1 and value[0] == value[-1] and value[0] in "\"'"
        value = value[1:-1] if quoted else _unwrap(value)
        stored = _add(fields, key, value)
        if not quoted and _is_escaped(record_type, key) and _HEX.fullmatch(value):
            text = bytes.fromhex(value).decode("utf-8", errors="replace")
            decoded[stored] = " ".join(text.rstrip("\0").split("\0")) if key == "proctitle" else text


def _unwrap(value: str) -> str:
    """Drop the punctuation of old PAM messages (``addr=?,`` ``res=success)``) but keep ``(none)``."""
    value = value.removesuffix(",")
    if value.endswith(")") and value.count(")") > value.count("("):
        value = value[:-1]
    return value


def _add(fields: dict[str, str], key: str, value: str) -> str:
    """Store a field under its name, or ``name_2``... when the record repeats it; returns the key used."""
    stored, repeat = key, 1
    while stored in fields:
        repeat += 1
        stored = f"{key}_{repeat}"
    fields[stored] = value
    return stored


def _is_escaped(record_type: str, key: str) -> bool:
    return key in _ESCAPED or (record_type == "EXECVE" and _EXECVE_ARG.fullmatch(key) is not None)


def _join_pieces(fields: dict[str, str], decoded: dict[str, str]) -> None:
    """Long EXECVE arguments come as ``aN_len=`` plus ``aN[0]=``, ``aN[1]=``...: join them into ``aN``."""
    pieces: dict[int, list[tuple[int, str]]] = {}
    for key in fields:
        match = _EXECVE_ARG.fullmatch(key)
        if match and match["piece"] is not None:
            pieces.setdefault(int(match["index"]), []).append((int(match["piece"]), key))
    for index, keys in pieces.items():
        ordered = [key for _, key in sorted(keys)]
        joined = "".join(fields[key] for key in ordered)
        encoded = [decoded.pop(key, None) is not None for key in ordered]
        if all(encoded):  # decode the whole: one character may span two pieces
            joined = bytes.fromhex(joined).decode("utf-8", errors="replace")
        decoded[f"a{index}"] = joined


def interpret(record: AuditRecord) -> dict[str, str]:
    """auparse-style interpretations, upper-case keys, only where they say more than the raw value."""
    out: dict[str, str] = {}
    for key, value in record.fields.items():
        meaning: str | None = None
        if key == "arch":
            meaning = _ARCHES.get(value.lower())
        elif key == "syscall" and record.fields.get("arch", "").lower() == _X86_64_ARCH and value.isdigit():
            meaning = X86_64.get(int(value))
        elif key == "exit" and value.startswith("-") and value[1:].isdigit():
            meaning = _errno(int(value[1:]))
        elif key in _IDS and value in (UNSET_ID, "-1"):
            meaning = "unset"
        else:
            meaning = record.decoded.get(key)
        if meaning is not None and meaning != value:
            out[key.upper()] = meaning
    for key, value in record.decoded.items():
        if key not in record.fields:  # a joined EXECVE argument: only its pieces are fields
            out[key.upper()] = value
    return out


def _errno(code: int) -> str | None:
    name = errno.errorcode.get(code)
    return f"{name}({os.strerror(code)})" if name else None
