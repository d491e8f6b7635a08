"""Write docs/configuration.md from the settings dataclasses themselves, so it cannot drift.

    python tools/config_reference.py            # rewrite docs/configuration.md
    python tools/config_reference.py --check    # exit 1 if the file is not what the code says

Each setting's line comes from the code: its type and default from the dataclass, its meaning
from the comment on its line (or the ``#:`` lines above it), else from the class docstring's
sentence that names it. tests/test_docs.py checks that the committed page is current.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

from equiprune.config import DataConfig, LimitConfig, LogConfig, ModelConfig, PlateauConfig, RunConfig, TrainConfig
from equiprune.experiments.results import RunResults
from equiprune.methods import METHODS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _type_name(tp) -> str:
    text = str(tp) if not isinstance(tp, type) else tp.__name__
    text = text.replace("typing.", "").replace("NoneType", "None")
    text = re.sub(r"Optional\[(.*)\]", r"\1 | None", text)
    text = re.sub(r"Literal\[(.*?)\]", lambda m: " or ".join(m.group(1).split(", ")), text)
    return text.replace("'", '"').replace("|", "or")


def _comment_of(cls, name: str) -> str:
    """The comment on the field's line or the ``#:`` lines above it, in ``cls`` or a base."""
    for klass in cls.__mro__:
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        for i, line in enumerate(lines):
            if re.match(rf"\s+{name}\s*:", line):
                if "  # " in line:
                    return line.split("  # ", 1)[1].strip()
                above = []
                for prev in reversed(lines[:i]):
                    if not prev.strip().startswith("#:"):
                        break
                    above.insert(0, prev.strip()[2:].strip())
                if above:
                    return " ".join(above)
        text = " ".join((klass.__doc__ or "").split())
        found = re.search(rf"``{name}``.*?(?=\s-\s``|$)", text)  # its bullet, or the rest of the text
        if found:
            first = re.split(r"(?<=[.;])\s", found.group(0))[0]  # its first sentence
            return first.replace("``", "`")
    return "–"


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return "unset" if f.default is None else f"`{f.default!r}`".replace("'", '"')
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "(a table)" if dataclasses.is_dataclass(value) else f"`{value!r}`"
    return "required"


def settings_table(cls, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.init or any(dataclasses.is_dataclass(a) for a in (hints[f.name], *typing.get_args(hints[f.name]))):
            continue  # a section of its own
        meaning = _comment_of(cls, f.name).replace("|", "\\|")
        rows.append(f"| `{prefix}{f.name}` | {_type_name(hints[f.name])} | {_default(f)} | {meaning} |")
    return rows


def page() -> str:
    lines = ["# Configuration reference", "",
             "Generated from the settings dataclasses by `python tools/config_reference.py`; do not edit by hand. "
             "Every key is optional; an unknown key or a bad value is refused by name before anything runs. "
             "How to use them: [quickstart](quickstart.md), [methods](methods.md).", ""]  # fmt: skip
    lines += ["## Top level", ""] + settings_table(RunConfig) + [""]
    for section, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig), ("limit", LimitConfig),
                       ("plateau", PlateauConfig), ("log", LogConfig)):  # fmt: skip
        lines += [f"## [{section}]", ""] + settings_table(cls, f"{section}.") + [""]
    lines += ["## [method]", "",
              "`name` picks the method; `preset` applies one of its named bundles of settings (yours override "
              "it); `exclude` lists layers left unpruned; `players` restricts it to one kind of player. The "
              "method's own settings sit beside them.", ""]  # fmt: skip
    for name in METHODS.names():
        method = METHODS.get(name)
        doc = " ".join((inspect.getdoc(method) or "").split("\n\n")[0].split())
        kinds = ", ".join(method.player_kinds)
        lines += [f"### `{name}`", "", f"{doc} Players: {kinds}. Role in a sweep report: {method.default_role}.", ""]
        presets = method.presets()
        if presets:
            lines += ["Presets: " + ", ".join(f"`{p}`" for p in sorted(presets)) + ".", ""]
        table = settings_table(method.settings_type, "")
        lines += (table if len(table) > 2 else ["No settings of its own."]) + [""]
    lines += ["## results.json", "",
              "What a finished run writes (`equiprune.experiments.results.RunResults`); older runs' names "
              "are read as these (see that module).", ""]  # fmt: skip
    lines += settings_table(RunResults) + [""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = page()
    if "--check" in argv:
        if PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE} is out of date: run python tools/config_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
