"""NBD wire protocol: constants, codecs and request checks, without any I/O.

Only what ``liftshift-nbd`` speaks is here: the fixed newstyle handshake with
``NBD_OPT_EXPORT_NAME``, ``NBD_OPT_LIST``, ``NBD_OPT_INFO``, ``NBD_OPT_GO`` and
``NBD_OPT_ABORT`` (every other option is answered ``NBD_REP_ERR_UNSUP``, which
includes declining structured replies), and simple replies in the
transmission phase.  Values follow the NBD protocol document
(NetworkBlockDevice/nbd ``doc/proto.md``); all integers are big-endian.

:func:`check_request` decides whether a request may run against an export
and with which NBD error it is refused; the server applies what it accepts.
Keeping that decision here, away from sockets and files, lets the tests walk
every refusal in memory.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# -- handshake --------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x0003E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0  # client flags
FLAG_C_NO_ZEROES = 1 << 1
CLIENT_FLAGS_KNOWN = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_NAMES = {OPT_EXPORT_NAME: "EXPORT_NAME", OPT_ABORT: "ABORT", OPT_LIST: "LIST", OPT_STARTTLS: "STARTTLS",
             OPT_INFO: "INFO", OPT_GO: "GO", OPT_STRUCTURED_REPLY: "STRUCTURED_REPLY"}

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR = 1 << 31
REP_ERR_UNSUP = REP_ERR + 1
REP_ERR_POLICY = REP_ERR + 2
REP_ERR_INVALID = REP_ERR + 3
REP_ERR_UNKNOWN = REP_ERR + 6
REP_ERR_SHUTDOWN = REP_ERR + 7

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# Transmission flags
TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2
TFLAG_SEND_FUA = 1 << 3
TFLAG_SEND_TRIM = 1 << 5
TFLAG_SEND_WRITE_ZEROES = 1 << 6
TFLAG_CAN_MULTI_CONN = 1 << 8

OPTION_HEADER = struct.Struct(">QII")  # magic, option, length
OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
HELLO = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags (+124 zero bytes unless NO_ZEROES)
OPTION_MAX = 64 << 10  # longest option data we read; longer is a hard disconnect
NAME_MAX = 4096  # the protocol's limit on strings

# -- transmission -----------------------------------------------------------

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
REQUEST = struct.Struct(">IHHQQI")  # magic, command flags, type, handle, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, handle

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6
CMD_NAMES = {CMD_READ: "READ", CMD_WRITE: "WRITE", CMD_DISC: "DISC", CMD_FLUSH: "FLUSH", CMD_TRIM: "TRIM",
             CMD_WRITE_ZEROES: "WRITE_ZEROES"}
WRITING_COMMANDS = frozenset({CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES})

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
# FUA is valid on every command once SEND_FUA is negotiated (it is ignored
# where nothing is written); NO_HOLE only on WRITE_ZEROES.  DF, REQ_ONE and
# FAST_ZERO need features this server does not advertise.
ALLOWED_FLAGS = {
    CMD_READ: CMD_FLAG_FUA,
    CMD_WRITE: CMD_FLAG_FUA,
    CMD_DISC: 0,
    CMD_FLUSH: CMD_FLAG_FUA,
    CMD_TRIM: CMD_FLAG_FUA,
    CMD_WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
}

# Error values (the protocol's fixed list, not the host's errno)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108
ERROR_NAMES = {EPERM: "EPERM", EIO: "EIO", ENOMEM: "ENOMEM", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
               EOVERFLOW: "EOVERFLOW", ENOTSUP: "ENOTSUP", ESHUTDOWN: "ESHUTDOWN"}

MIN_BLOCK = 512
PREFERRED_BLOCK = 4096
MAX_BLOCK = 32 << 20


class ProtocolViolation(Exception):
    """The peer broke a MUST of the protocol: the connection is closed (hard disconnect)."""


class BadOption(Exception):
    """An option's data is malformed: answered ``NBD_REP_ERR_INVALID``."""


@dataclass(frozen=True)
class RequestRefused:
    """A request that must not run: answered with ``error`` (an NBD error value)."""

    error: int
    why: str

    @property
    def error_name(self) -> str:
        """The error's symbolic name (``EINVAL``...)."""
        return ERROR_NAMES.get(self.error, str(self.error))


@dataclass(frozen=True)
class ExportShape:
    """What :func:`check_request` needs to know about an export."""

    size: int
    read_only: bool
    max_block: int = MAX_BLOCK


def transmission_flags(read_only: bool) -> int:
    """The transmission flags of an export.

    ``CAN_MULTI_CONN`` is advertised: every connection of an export writes
    through one ordered path into one file descriptor and the server keeps no
    cache of its own, so a FLUSH (``fdatasync``) on any connection covers the
    completed writes of all of them.
    """
    flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_CAN_MULTI_CONN
    if read_only:
        return flags | TFLAG_READ_ONLY
    return flags | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES


def check_request(shape: ExportShape, cmd: int, flags: int, offset: int, length: int) -> RequestRefused | None:
    """Refuse a request with the error the protocol asks for, or return None.

    A zero-length request inside the export is accepted (and does nothing).
    Writing past the end is ``ENOSPC``, reading past it ``EINVAL``; a READ or
    WRITE longer than the maximum block size is ``EOVERFLOW`` (TRIM and
    WRITE_ZEROES carry no payload and may be longer).
    """
    name = CMD_NAMES.get(cmd)
    if name is None:
        return RequestRefused(EINVAL, f"unknown command {cmd}")
    bad = flags & ~ALLOWED_FLAGS[cmd]
    if bad:
        return RequestRefused(EINVAL, f"command flags {bad:#x} are not valid on {name}")
    if cmd in (CMD_DISC, CMD_FLUSH):
        if offset or length:
            return RequestRefused(EINVAL, f"{name} with offset {offset} / length {length}: both must be 0")
        return None
    if cmd in WRITING_COMMANDS and shape.read_only:
        return RequestRefused(EPERM, f"{name} on a read-only export")
    if cmd in (CMD_READ, CMD_WRITE) and length > shape.max_block:
        return RequestRefused(EOVERFLOW, f"{name} of {length} bytes exceeds the maximum block size {shape.max_block}")
    if offset + length > shape.size:
        return RequestRefused(EINVAL if cmd == CMD_READ else ENOSPC,
                              f"{name} [{offset}, +{length}) goes past the end of the {shape.size}-byte export")
    return None


# -- option codecs ----------------------------------------------------------


def option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    """One fixed-newstyle option reply."""
    return OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, reply_type, len(data)) + data


def parse_info_request(data: bytes) -> tuple[str, list[int]]:
    """The export name and requested information types of ``NBD_OPT_INFO``/``GO``.

    Layout: u32 name length, name, u16 count, count x u16 info type.
    """
    if len(data) < 6:
        raise BadOption(f"option data of {len(data)} bytes is shorter than the 6-byte minimum")
    (nlen,) = struct.unpack_from(">I", data, 0)
    if nlen > NAME_MAX or 4 + nlen + 2 > len(data):
        raise BadOption(f"export name length {nlen} does not fit in {len(data)} bytes of option data")
    name = decode_name(data[4 : 4 + nlen])
    (count,) = struct.unpack_from(">H", data, 4 + nlen)
    if len(data) != 4 + nlen + 2 + 2 * count:
        raise BadOption(f"{count} information requests do not match {len(data)} bytes of option data")
    infos = list(struct.unpack_from(f">{count}H", data, 4 + nlen + 2))
    return name, infos


def decode_name(raw: bytes) -> str:
    """An export name: UTF-8 without NUL, at most 4096 bytes."""
    if len(raw) > NAME_MAX:
        raise BadOption(f"export name of {len(raw)} bytes is longer than {NAME_MAX}")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadOption("export name is not valid UTF-8") from None
    if "\0" in name:
        raise BadOption("export name contains NUL")
    return name


def info_export(size: int, tflags: int) -> bytes:
    """``NBD_INFO_EXPORT``: size and transmission flags."""
    return struct.pack(">HQH", INFO_EXPORT, size, tflags)


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    """``NBD_INFO_BLOCK_SIZE``: minimum, preferred and maximum block size."""
    return struct.pack(">HIII", INFO_BLOCK_SIZE, minimum, preferred, maximum)


def info_text(info_type: int, text: str) -> bytes:
    """``NBD_INFO_NAME`` or ``NBD_INFO_DESCRIPTION``."""
    return struct.pack(">H", info_type) + text.encode("utf-8")


def server_entry(name: str) -> bytes:
    """``NBD_REP_SERVER`` data: u32 name length, name."""
    raw = name.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw
