"""The ``effspec`` command line. Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.

compile, info, validate and schema never import torch or TensorFlow; check and convert-weights do,
lazily, inside their handlers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

# Start-up time matters for a CLI: pydantic would otherwise scan every installed package's entry
# points for plugins on first model build (tens of ms with TensorFlow installed).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from effspec import __version__  # noqa: E402
from effspec.emit.options import add_backbone_options  # noqa: E402
from effspec.support.errors import EffspecError, SpecError, UsageError  # noqa: E402


def _cmd_compile(args: argparse.Namespace) -> int:
    from effspec.emit.pipeline import compile_specs
    from effspec.emit.registry import available_backends

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
    from effspec.emit.pipeline import build

    for spec in args.specs:
        compiled = build(spec)
        for line in compiled.warnings:
            print(line, file=sys.stderr)
        print(f"{spec}: ok ({compiled.model.name}, {compiled.report.total.params:,} parameters)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from effspec.emit.pipeline import build
    from effspec.tools.info import info_json, info_table

    compiled = build(args.spec)
    for line in compiled.warnings:
        print(line, file=sys.stderr)
    if args.diagram:  # matplotlib loads only here
        from effspec.emit.pipeline import spec_inputs
        from effspec.tools.diagram import draw_diagram

        written = draw_diagram(compiled.report, Path(args.diagram), spec_inputs(args.spec))
        print(f"wrote {written}", file=sys.stderr)
    if args.output_stride is not None and not args.features:
        raise UsageError(f"--output-stride {args.output_stride}: add --features (it sets the backbone's output stride)")
    if args.features:
        from effspec.tools.info import features_json, features_table

        stride = args.output_stride or 32
        text = json.dumps(features_json(compiled.model, stride), indent=2) if args.json else None
        print(text or features_table(compiled.model, stride))
    elif args.json:
        print(json.dumps(info_json(compiled.report), indent=2))
    else:
        print(info_table(compiled.report))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from effspec.core.jsonschema import schema_text

    text = schema_text()
    if args.output:
        from effspec.support.output import write_file

        write_file(Path(args.output), text)
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
    p.add_argument("--diagram", metavar="FILE", help="also draw the architecture: .svg, .png or .pdf (matplotlib)")
    add_backbone_options(
        p, "the backbone's feature levels instead (build_model(features_only=True)): module, channels, reduction"
    )
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
    from effspec.tools.commands import add_commands as add_tool_commands  # scale, search, plot

    add_tool_commands(sub)
    from effspec.backends.commands import add_commands as add_train_commands  # train (torch / keras)

    add_train_commands(sub)
    return parser


def _stdout_usable() -> bool:
    if sys.stdout is None:  # started with stdout closed (`effspec ... >&-`)
        return False
    try:
        fd = sys.stdout.fileno()
    except io.UnsupportedOperation:  # a stream without a descriptor (pytest's capture): nothing to check
        return True
    except (ValueError, AttributeError):  # a closed stream
        return False
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _silence_stdout(stream: Any) -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush cannot fail a second time."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except Exception:
        pass


def _error(text: str) -> None:
    if sys.stderr is not None:
        try:
            print(f"effspec: error: {text}", file=sys.stderr)
        except (OSError, ValueError):
            pass


class _StdoutError(Exception):
    """Writing standard output failed (a full disk, an I/O error): not an internal error."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))


class _GuardedStdout:
    """sys.stdout, with write errors other than a closed pipe turned into _StdoutError."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutError(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutError(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    if sys.stderr is None:  # started with stderr closed (`2>&-`): messages go nowhere, never to stdout
        sys.stderr = open(os.devnull, "w")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not _stdout_usable():
        _error("standard output is closed; nothing was done")
        return 2
    original = sys.stdout
    sys.stdout = _GuardedStdout(original)
    try:
        from effspec.core.limits import check_args

        check_args(args)  # every sizing flag bounded before any work
        from effspec.core.loader import spec_files
        from effspec.support.output import declare_inputs

        named = [getattr(args, name, None) for name in ("weights", "input", "accuracy")]
        specs = [getattr(args, "spec", None), *(getattr(args, "specs", None) or [])]
        declare_inputs(  # no output of this command may replace one of them
            files=[item for item in named if isinstance(item, str)],
            specs=[item for item in specs if isinstance(item, str)],
            chain=spec_files,
        )
        code = int(args.handler(args))
        sys.stdout.flush()  # a full disk (`> /dev/full`) shows up here, not silently at exit
        return code
    except SpecError as exc:  # already "file:line:column: error: field: message", one line per error
        for line in exc.lines():
            print(line, file=sys.stderr)
        return exc.exit_code
    except EffspecError as exc:
        print(f"effspec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("effspec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`effspec info SPEC | head`): stop quietly, as cat does
        _silence_stdout(original)  # no second error at exit's flush
        return 128 + 13  # SIGPIPE's conventional status
    except _StdoutError as exc:
        _silence_stdout(original)
        _error(f"cannot write to standard output: {exc}")
        return 2
    except Exception as exc:  # an internal bug: one line, the traceback only on request
        return _internal(exc)
    finally:
        sys.stdout = original


def _internal(exc: BaseException) -> int:
    if os.environ.get("EFFSPEC_DEBUG"):
        raise exc
    text = " ".join(str(exc).split())
    print(
        f"effspec: internal error: {type(exc).__name__}: {text} (set EFFSPEC_DEBUG=1 for a traceback)",
        file=sys.stderr,
    )
    return 70


if __name__ == "__main__":
    sys.exit(main())
