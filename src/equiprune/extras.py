"""Optional dependencies: importing one, or saying which extra installs it.

The core needs only torch (and a few small packages); ONNX export, TensorBoard, cluster jobs and
Hugging Face models live behind extras (``pip install 'equiprune[onnx]'`` and so on). Every place
that needs one asks here, so that a missing package is always the same clear error, raised before
any work is done: what needs it, what is missing, and the command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from equiprune.errors import EquipruneError


def require_extra(
    extra: str, needed_by: str, *modules: str, error: type[EquipruneError] = EquipruneError
) -> ModuleType:
    """Import ``modules`` in order (what a module needs first) and return the last; when one cannot be
    imported, raise ``error``:
    "<needed_by> needs the <extra> extra (<module> is not installed): pip install 'equiprune[<extra>]'"."""
    if not modules:
        raise ValueError("require_extra: name at least one module to import")
    module = None
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            missing = exc.name or name
            raise error(
                f"{needed_by} needs the {extra} extra ({missing} is not installed): pip install 'equiprune[{extra}]'"
            ) from exc
    return module
