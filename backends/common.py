"""What every backend's ``model.py`` context shares: the stage table and the spec's header facts.

The ``STAGES`` table (``templates/stages.py.j2``) is the same text in every backend: the IR's
fields printed, with the spec's own names (activations as the spec spells them, momentum as the
spec's decay). A backend maps those names to its framework inside the generated file.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from effspec.core import ir
from effspec.emit.render import environment, py_literal

#: Longest literal of one piece of a split DESCRIPTION constant, and of an unsplit one (ruff format
#: joins implicitly concatenated strings whenever they fit its 88 columns, indented by 4).
DESCRIPTION_WIDTH = 80
DESCRIPTION_UNSPLIT = 84


#: The shared template every backend's model.py prints its stage table from.
TEMPLATE_DIR = Path(__file__).parent / "templates"


def stage_table(model: ir.Model) -> str:
    """The config dataclasses, ``STEM``, ``HEAD`` and the ``STAGES`` table: the same text in every
    backend's ``model.py``. Every value is an IR field printed; nothing is derived here."""
    return environment(TEMPLATE_DIR).get_template("stages.py.j2").render(model=model)


def width(text: str) -> int:
    """Columns ``text`` takes as ruff format measures a line: East Asian wide and fullwidth characters
    take two, combining marks none (a literal's other non-printable characters are escapes by now)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1 for ch in text)


def parenthesized(name: str, literal: str) -> bool:
    """Whether ruff format wraps ``NAME = literal`` in parentheses: when the line is too long and the
    literal alone fits an indented line (a literal that fits nowhere stays on the assignment line)."""
    return width(f"{name} = {literal}") > 88 and width(f"    {literal}") <= 88


def description_lines(text: str, limit: int = DESCRIPTION_WIDTH) -> tuple[str, ...]:
    """Free text as pieces whose literals fit a line; joined they give ``text`` back exactly.

    One piece when its literal fits an indented line: ruff would join shorter pieces anyway.
    """
    if width(py_literal(text)) <= DESCRIPTION_UNSPLIT:
        return (text,)
    tokens = [piece for word in re.split(r"(\s+)", text) for piece in _fit(word, limit)]
    pieces: list[str] = []
    current = ""
    for token in tokens:
        if current and width(py_literal(current + token)) > limit:
            pieces.append(current)
            current = ""
        current += token
    pieces.append(current)
    return tuple(pieces)


def _fit(word: str, limit: int) -> list[str]:
    """A token whose literal is too long for a line, as single characters; otherwise itself."""
    return list(word) if width(py_literal(word)) > limit else [word]


def recipe_context(model: ir.Model) -> dict[str, object]:
    """What every backend's ``train.py`` template prints: the spec's recipe as a ``Recipe(...)``
    literal (``effspec.backends.recipe``, where the recipe is defined once), the spec, and the
    module name its sibling ``model.py`` is imported under."""
    from .recipe import recipe_from_model, recipe_source

    return {
        "recipe_source": recipe_source(recipe_from_model(model), py_literal),
        "spec_name": model.name,
        "spec_path": model.spec_path,
        "spec_sha256": model.spec_sha256,
        "module_name": f"{model.python_name}_model",  # sys.modules name of the sibling model.py
    }


def check_activations(model: ir.Model, known: dict[str, str], backend: str) -> None:
    """Every activation and gate the IR names has an entry in the backend's table."""
    names = {part.activation for block in model.blocks for part in block.parts if part.activation is not None}
    names |= {block.se.gate for block in model.blocks if block.se is not None}
    names |= {part.activation for part in (model.stem, model.head.conv, model.head.pooled_conv) if part is not None}
    names.discard(None)
    for name in sorted(names - set(known)):
        raise ValueError(f"the {backend} backend has no activation {name!r}. Known: {', '.join(sorted(known))}")


def header_context(model: ir.Model) -> dict[str, object]:
    """The module constants every backend prints: the spec, its input, regularization, the table."""
    description = description_lines(model.description)
    return {
        "spec_name": model.name,
        "spec_path": model.spec_path,
        "spec_sha256": model.spec_sha256,
        "description_lines": description,
        "description_inline": len(description) == 1 and width(f"DESCRIPTION = {py_literal(description[0])}") <= 88,
        "spec_path_wrapped": parenthesized("SPEC_PATH", py_literal(model.spec_path)),
        "python_name": model.python_name,
        "resolution": model.resolution,
        "input_channels": model.input.channels,
        "mean": tuple(model.mean),
        "std": tuple(model.std),
        "num_classes": model.head.num_classes,
        "dropout": model.head.dropout,
        "drop_path_rate": model.drop_path_rate,
        "padding": model.padding,
        "bn_eps": model.batch_norm.eps,
        "bn_momentum": model.batch_norm.momentum,
        "stage_table": stage_table(model),
        "uses_mixed_conv": any(
            part.mixed for block in model.blocks for part in block.parts if isinstance(part, ir.ConvBnAct)
        ),
        "model": model,
        "params": model.params,
        "macs": model.macs,
    }
