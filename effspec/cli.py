"""The ``effspec`` command line. Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.

compile, info, validate and schema never import torch or TensorFlow; check and convert-weights do,
lazily, inside their handlers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Start-up time matters for a CLI: pydantic would otherwise scan every installed package's entry
# points for plugins on first model build (tens of ms with TensorFlow installed).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from effspec import __version__  # noqa: E402
from effspec.errors import EffspecError, SpecError, UsageError  # noqa: E402


def _cmd_compile(args: argparse.Namespace) -> int:
    from effspec.pipeline import compile_specs
    from effspec.registry import available_backends

    known = available_backends()
    backends = args.backend or known
    if not backends:
        raise UsageError("no backends are registered yet; nothing to compile")
    for name in backends:
        if name not in known:
            raise UsageError(f"unknown backend {name!r}. Known backends are: {', '.join(known)}")
    written, warnings = compile_specs(args.specs, list(dict.fromkeys(backends)), Path(args.output))
    for line in warnings:
        print(line, file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from effspec.pipeline import build

    for spec in args.specs:
        compiled = build(spec)
        for line in compiled.warnings:
            print(line, file=sys.stderr)
        print(f"{spec}: ok ({compiled.model.name}, {compiled.report.total.params:,} parameters)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from effspec.info import info_json, info_table
    from effspec.pipeline import build

    compiled = build(args.spec)
    for line in compiled.warnings:
        print(line, file=sys.stderr)
    if args.json:
        print(json.dumps(info_json(compiled.report), indent=2))
    else:
        print(info_table(compiled.report))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from effspec.jsonschema import schema_text

    text = schema_text()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="effspec", description="Compile EfficientNet-family YAML specs into PyTorch and Keras code."
    )
    parser.add_argument("--version", action="version", version=f"effspec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="emit model (and training) code for each spec and backend")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec YAML files")
    p.add_argument("--backend", action="append", metavar="NAME", help="backend to emit (repeatable; default: all)")
    p.add_argument("-o", "--output", default="generated", metavar="DIR", help="output root (default: generated/)")
    p.set_defaults(handler=_cmd_compile)

    p = sub.add_parser("info", help="scaled stage table, parameters, MACs and activation memory")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_cmd_info)

    p = sub.add_parser("validate", help="load, validate, scale and lower specs without writing anything")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.set_defaults(handler=_cmd_validate)

    p = sub.add_parser("schema", help="print (or write) the JSON Schema of the spec language")
    p.add_argument("-o", "--output", metavar="FILE")
    p.set_defaults(handler=_cmd_schema)

    try:
        from effspec.equivalence.commands import add_commands
    except ModuleNotFoundError as exc:
        if exc.name not in ("effspec.equivalence", "effspec.equivalence.commands"):
            raise
    else:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except SpecError as exc:  # already "file:line:column: error: field: message"
        print(exc, file=sys.stderr)
        return exc.exit_code
    except EffspecError as exc:
        print(f"effspec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("effspec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`effspec info SPEC | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 128 + 13  # SIGPIPE's conventional status
    except Exception as exc:  # an internal bug: one line, the traceback only on request
        if os.environ.get("EFFSPEC_DEBUG"):
            raise
        print(
            f"effspec: internal error: {type(exc).__name__}: {exc} (set EFFSPEC_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
