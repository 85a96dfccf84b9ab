"""Loading a daemon's configuration: TOML file, environment overrides, checks.

Each daemon describes its configuration as one dataclass whose fields carry
their default and a ``help`` string (``field(metadata={"help": ...})``);
:func:`load` reads the file, applies ``<PREFIX><KEY>`` environment variables
(``LIFTSHIFT_SINK_LISTEN=...``), checks every value's type, and raises
:class:`~liftshift.daemon.errors.ConfigError` naming the key and the file.
Nested tables map to nested dataclasses; arrays of tables to lists of them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def doc(default: Any = dataclasses.MISSING, help: str = "", *, size: bool = False, **kw: Any) -> Any:
    """A dataclass field with its help text; ``size=True`` accepts "64MiB"
    style values (``default_factory=`` works too)."""
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(metadata={"help": help, "size": size}, **kw)


def parse_size(value: Any, key: str, source: str) -> int:
    """Accept 1048576, "1MiB", "64 KiB", "2G" (binary units) as a byte count."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        s = value.strip().upper().replace(" ", "").removesuffix("B").removesuffix("I")
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
        digits = s[:-1] if mult > 1 else s
        try:
            n = float(digits)
        except ValueError:
            n = -1.0
        # float() also takes "nan" and "inf": only finite, non-negative counts are sizes.
        if 0 <= n < float(1 << 62):
            return int(n * mult)
    raise ConfigError(f"{source}: key '{key}': expected a size like 1048576 or \"64MiB\", got {value!r}")


def format_size(n: int) -> str:
    """Render a byte count the way a config file would write it ("16MiB")."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, source)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}': expected a list, got {type(value).__name__}")
        return [_convert(inner, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}': expected a table, got {type(value).__name__}")
        return _build(tp, value, source, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}': expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        # Environment overrides arrive as strings; TOML gives int or float.
        accepted = (int,) if tp is int else (int, float)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        elif isinstance(value, accepted) and not isinstance(value, bool):
            return tp(value)
        what = "an integer" if tp is int else "a number"
        raise ConfigError(f"{source}: key '{key}': expected {what}, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: key '{key}': expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: key '{key}': expected a path string, got {value!r}")
        return Path(value)
    return value


def _build(cls: type[T], table: dict[str, Any], source: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known keys: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name in table:
            value = table[name]
            if f.metadata.get("size"):
                kwargs[name] = parse_size(value, prefix + name, source)
            else:
                kwargs[name] = _convert(hints[name], value, prefix + name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: required key '{prefix}{name}' is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as e:
            raise ConfigError(f"{source}: {e.message}") from None
    return obj


def load(cls: type[T], path: str | os.PathLike[str] | None, env_prefix: str,
         environ: dict[str, str] | None = None) -> T:
    """Load ``cls`` from the TOML file ``path`` (None: defaults only) plus
    environment overrides of top-level scalar keys."""
    env = os.environ if environ is None else environ
    table: dict[str, Any] = {}
    source = str(path) if path is not None else "<defaults>"
    if path is not None:
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{source}: configuration file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: not valid TOML: {e}") from None
        except OSError as e:  # a directory, no permission, ...
            raise ConfigError(f"{source}: cannot read the configuration file: {e.strerror or e}") from None
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in names:
        var = env_prefix + name.upper()
        if var in env:
            table[name] = env[var]
            source_note = f"{source} (with {var} from the environment)"
            source = source_note if var not in source else source
    return _build(cls, table, source)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, for docs and ``--print-config-reference``;
    nested tables and arrays of tables are listed key by key (``sim.vm.disks.size``)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            kind = "array of tables" if inner is not tp else "table"
            out.append((prefix + f.name, f"({kind})", f.metadata.get("help", "")))
            out.extend(describe(inner, prefix + f.name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            size_default = f.metadata.get("size") and isinstance(f.default, int)
            if size_default:
                default = format_size(f.default)
            elif isinstance(f.default, Path):
                default = f'"{f.default}"'
            else:
                default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        out.append((prefix + f.name, default, f.metadata.get("help", "")))
    return out


def host_port(value: str, key: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:9100"`` for IPv6; port 0 picks one); ConfigError naming ``key`` otherwise."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535 or any(c in host for c in "[] /"):
        raise ConfigError(f"key '{key}': expected host:port with a port in 0-65535 (\"[::1]:9100\" for IPv6), "
                          f"got {value!r}")
    return host, int(port)
