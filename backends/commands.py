"""``effspec train SPEC --backend torch|keras [train.py flags]``: the generated trainer on a spec
directly. The spec is compiled in memory (no generated folder); its model.py is imported from that
text and its recipe is the flags' defaults, exactly as the generated train.py would run it.

Nothing heavy is imported here: torch or TensorFlow load inside the handler.
"""

from __future__ import annotations

import argparse

from effspec.emit.registry import BUILTIN_BACKENDS as BACKENDS
from effspec.support.errors import UsageError


def split_backend(flags: list[str], backend: str | None) -> tuple[str | None, list[str]]:
    """--backend NAME may also come after the spec, among the trainer's flags."""
    rest: list[str] = []
    index = 0
    while index < len(flags):
        flag = flags[index]
        if flag == "--backend" and index + 1 < len(flags):
            backend, index = flags[index + 1], index + 2
            continue
        if flag.startswith("--backend="):
            backend = flag.split("=", 1)[1]
        else:
            rest.append(flag)
        index += 1
    return backend, rest


def _cmd_train(args: argparse.Namespace) -> int:
    backend, flags = split_backend(list(args.flags), args.backend)
    if backend is None:
        raise UsageError("train: pass --backend torch or --backend keras")
    if backend not in BACKENDS:
        raise UsageError(f"train: unknown backend {backend!r}. Known: {', '.join(BACKENDS)}")
    from effspec.emit.pipeline import build, emit

    from .recipe import recipe_from_model
    from .runtime_shared import module_from_source

    compiled = build(args.spec)
    model = compiled.model
    from .finetune import register_model

    register_model(model)  # --init reads foreign and Keras files through this spec
    [files] = emit(model, [backend]).values()
    if backend == "torch":
        from .torch import runtime
    else:
        from .keras import runtime  # type: ignore[no-redef]
    name = f"{model.python_name}_model"
    net = module_from_source(files["model.py"], name, f"<effspec train {args.spec}: model.py>")
    return int(runtime.main(recipe_from_model(model), net, flags))


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a spec's model with the generated trainer (compiled in memory)",
        description="Train SPEC's model with effspec's torch or Keras trainer; every flag after the spec "
        "is the generated train.py's (see `effspec train SPEC --backend torch --help`).",
    )
    p.add_argument("--backend", default=None, metavar="NAME", help="torch or keras (also accepted after SPEC)")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("flags", nargs=argparse.REMAINDER, metavar="FLAG", help="the trainer's flags")
    p.set_defaults(handler=_cmd_train)
