"""
cli.py — settings for the scripts: dataclasses filled from TOML config files and --key=value flags.

    python train.py config/train_shakespeare_baby.toml --max_iters=500 --dropout=0.1

Later sources win: dataclass defaults < config files (in order) < flags. Values are parsed by the
type of the dataclass field, so `--max_iters=abc` and `--no_such_key=1` are errors with a message,
never code: nothing is `exec`'d (nanoGPT's configurator runs config files as Python; TOML cannot run).
"""
import dataclasses
import difflib
import sys
import tomllib
import typing


class UsageError(Exception):
    """A bad command line: main_guard prints it as one line and exits with status 2."""


def _fields(*dcs):
    out = {}
    for dc in dcs:
        hints = typing.get_type_hints(type(dc))
        for f in dataclasses.fields(dc):
            out[f.name] = (dc, hints[f.name])
    return out


def _convert(name, value, typ):
    """Turn a flag string or TOML value into the field's type, or raise UsageError."""
    origin_args = typing.get_args(typ)
    if origin_args and type(None) in origin_args:           # Optional[X]: "none" clears it
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        typ = next(a for a in origin_args if a is not type(None))
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            low = str(value).lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if typing.get_origin(typ) is list:
            items = value if isinstance(value, list) else [v for v in str(value).split(",") if v]
            return [_convert(name, v, typing.get_args(typ)[0]) for v in items]
    except (ValueError, TypeError):
        pass
    tname = getattr(typ, "__name__", str(typ))
    raise UsageError(f"--{name} expects {tname}, got {value!r}")


def _set(fields, name, value, source, seen=None):
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=3)
        hint = f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""
        raise UsageError(f"unknown setting {name!r} in {source}{hint}; --help lists them all")
    dc, typ = fields[name]
    setattr(dc, name, _convert(name, value, typ))
    if seen is not None:
        seen.add(name)


def help_text(prog, description, fields):
    lines = [f"usage: python {prog} [config.toml ...] [--key=value ...]", "", description.strip(), "",
             "settings (default):"]
    for name, (dc, typ) in fields.items():
        tname = getattr(typ, "__name__", str(typ).replace("typing.", ""))
        lines.append(f"  --{name:<24} {tname:<8} {getattr(dc, name)!r}")
    return "\n".join(lines)


def parse(argv, *dataclass_instances, prog="script.py", description=""):
    """Fill the given dataclass instances in place from config files and flags in argv.

    Positional arguments ending in .toml are config files; `--key=value`, `--key value` and a bare
    `--flag` (for booleans) set one field. `--help` prints every setting with its default and exits.
    Returns the set of setting names that a file or flag gave explicitly.
    """
    fields = _fields(*dataclass_instances)
    seen = set()
    if "-h" in argv or "--help" in argv:
        print(help_text(prog, description, fields))
        raise SystemExit(0)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            if not arg.endswith(".toml"):
                raise UsageError(f"unexpected argument {arg!r}: settings are --key=value, config files end in .toml")
            try:
                with open(arg, "rb") as f:
                    table = tomllib.load(f)
            except FileNotFoundError:
                raise UsageError(f"config file not found: {arg}") from None
            except tomllib.TOMLDecodeError as e:
                raise UsageError(f"config file {arg} is not valid TOML: {e}") from None
            for k, v in table.items():
                _set(fields, k, v, arg, seen)
        else:
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif key in fields and fields[key][1] is bool and (i + 1 >= len(argv) or argv[i + 1].startswith("--")
                                                                or argv[i + 1].endswith(".toml")):
                value = "true"
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise UsageError(f"--{key} needs a value")
            _set(fields, key.replace("-", "_"), value, "the command line", seen)
        i += 1
    return seen


def to_dict(*dataclass_instances) -> dict:
    out = {}
    for dc in dataclass_instances:
        out.update(dataclasses.asdict(dc))
    return out


def save_json(path, obj):
    """Atomic JSON write (tmp + rename)."""
    from data.files import write_json
    write_json(path, obj)


def main_guard(fn):
    """Run fn(sys.argv[1:]); turn expected errors (bad files, bad values) into one line on stderr and
    exit status 1. PREFIXGPT_DEBUG=1 shows the full traceback instead."""
    import os
    try:
        return fn(sys.argv[1:])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except (FileNotFoundError, ValueError) as e:
        if os.environ.get("PREFIXGPT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
