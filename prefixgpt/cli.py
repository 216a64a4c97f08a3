"""
cli.py — settings for the scripts: dataclasses filled from TOML config files and --key=value flags.

    python train.py config/train_shakespeare_baby.toml --max_iters=500 --dropout=0.1

Later sources win: dataclass defaults < config files (in order) < flags. Values are parsed by the
type of the dataclass field, so `--max_iters=abc` and `--no_such_key=1` are errors with a message,
never code: nothing is `exec`'d (nanoGPT's configurator runs config files as Python; TOML cannot run).

Each field says what it allows, beside its default: `setting(12, min=1)`, `setting("auto",
choices=(...))`, `setting("", pattern=...)`. parse() checks every field of every dataclass once all
sources are applied, so a new setting gets its check by construction, and a dataclass may add a
`validate()` method for rules that tie fields together (n_embd divisible by n_head). Floats must be
finite unless a field says otherwise. This module knows nothing about models or training.
"""
import dataclasses
import difflib
import math
import os
import re
import runpy
import sys
import tomllib
import typing


# Old names that still work, each for the one name the scripts use now (nanoGPT's scripts call the base --ckpt).
ALIASES = {"ckpt": "base"}


class UsageError(Exception):
    """A bad command line: main_guard prints it as one line and exits with status 2."""


def setting(default, *, min=None, max=None, choices=None, pattern=None, finite=True, gt=None):
    """A dataclass field with its allowed values: min/max (inclusive), gt (exclusive lower bound),
    choices, a regular expression the whole string must match, finite (floats). None is always
    allowed for an Optional field. A list default gets a factory, and each item is checked."""
    rules = {k: v for k, v in dict(min=min, max=max, choices=choices, pattern=pattern, finite=finite,
                                   gt=gt).items() if v is not None}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=rules)
    return dataclasses.field(default=default, metadata=rules)


def check_value(name, value, rules) -> str | None:
    """What is wrong with value under rules, or None."""
    if value is None:
        return None
    if isinstance(value, list):
        return next((m for m in (check_value(name, v, rules) for v in value) if m), None)
    if isinstance(value, float) and rules.get("finite", True) and not math.isfinite(value):
        return f"--{name} must be a finite number, got {value}"
    if "choices" in rules and value not in rules["choices"]:
        return f"--{name} must be one of {', '.join(map(str, rules['choices']))}, got {value!r}"
    if "pattern" in rules and not re.fullmatch(rules["pattern"], str(value)):
        return f"--{name}={value!r} is not allowed (expected {rules['pattern'].replace('|', ' | ')})"
    if "min" in rules and value < rules["min"]:
        return f"--{name} must be at least {rules['min']}, got {value}"
    if "gt" in rules and not value > rules["gt"]:
        return f"--{name} must be greater than {rules['gt']}, got {value}"
    if "max" in rules and value > rules["max"]:
        return f"--{name} must be at most {rules['max']}, got {value}"
    return None


def validate(*dataclass_instances):
    """Check every field against its rules, then each dataclass's own validate(); UsageError on the first
    problem."""
    for dc in dataclass_instances:
        for f in dataclasses.fields(dc):
            problem = check_value(f.name, getattr(dc, f.name), f.metadata)
            if problem:
                raise UsageError(problem)
        if hasattr(dc, "validate"):
            try:
                dc.validate()
            except ValueError as e:
                raise UsageError(str(e)) from None


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
    if name not in fields and ALIASES.get(name) in fields:
        name = ALIASES[name]
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
        rules = next(f.metadata for f in dataclasses.fields(dc) if f.name == name)
        allowed = ", ".join(f"{k} {v}" for k, v in rules.items() if k != "finite")
        lines.append(f"  --{name:<24} {tname:<8} {getattr(dc, name)!r}" + (f"  ({allowed})" if allowed else ""))
    lines += [f"  --{old} is another name for --{new}" for old, new in ALIASES.items() if new in fields]
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
    validate(*dataclass_instances)
    return seen


def main_guard(fn):
    """Run fn(sys.argv[1:]); turn expected errors into one line on stderr: a bad command line exits with
    status 2, a bad file or value or a failed write (a full disk) with 1, Ctrl-C with 130.
    PREFIXGPT_DEBUG=1 shows the full traceback instead."""
    try:
        return fn(sys.argv[1:])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except (OSError, ValueError) as e:   # FileNotFoundError, IsADirectoryError, no space left: OSErrors
        if os.environ.get("PREFIXGPT_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        if os.environ.get("PREFIXGPT_DEBUG"):
            raise
        print("interrupted (Ctrl-C); files already saved are left as they were", file=sys.stderr)
        raise SystemExit(130)


def one_line(e: BaseException) -> str:
    """An exception as one line: OSErrors as 'strerror: filename' when they carry those, no newlines."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        text = f"{e.strerror}: {e.filename}"
    else:
        text = str(e)
    return " ".join(text.split())


def run_script(path: str, args: list[str]) -> int:
    """Run a project script (train.py, data/e2e/prepare.py, ...) in this process as `python path args`
    would, and return its exit status. What it prints goes to this process's sys.stdout and sys.stderr.
    Why: a new Python process pays torch's import (seconds on a small CPU) at every step of a pipeline
    such as demo.py; the script's own main_guard still turns its errors into one line and a status."""
    argv, path_before = sys.argv, list(sys.path)
    sys.argv = [path, *args]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 1
        return e.code or 0
    finally:
        sys.argv, sys.path[:] = argv, path_before
    return 0
