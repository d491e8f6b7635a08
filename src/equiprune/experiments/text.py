"""English sentences for distilling and calibrating language models, available offline.

``stdlib-docstrings``: the docstrings of about fifty modules of Python's standard library, split
into sentences (about 2,500, in a fixed order on every machine with the same Python). Or a text
file of your own, one sentence (or passage) per line.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from equiprune.errors import ConfigError

STDLIB = "stdlib-docstrings"
STDLIB_MODULES = """os json collections itertools functools pathlib re string textwrap argparse logging subprocess
shutil random statistics datetime decimal fractions csv sqlite3 threading asyncio unittest typing dataclasses enum
heapq bisect zipfile tarfile gzip hashlib hmac secrets socket ssl html calendar configparser contextlib copy pickle
pprint inspect ast tokenize difflib email.message http.client urllib.parse xml.etree.ElementTree""".split()


def stdlib_sentences() -> list[str]:
    """Sentences of 40 to 300 characters, mostly letters, from the standard library's docstrings, sorted."""
    found = set()
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        objects = [module, *(v for _, v in inspect.getmembers(module) if inspect.isclass(v) or inspect.isfunction(v))]
        for obj in objects:
            text = " ".join((inspect.getdoc(obj) or "").split())
            for s in re.split(r"(?<=[.!?])\s+", text):
                if 40 <= len(s) <= 300 and sum(c.isalpha() for c in s) > 0.6 * len(s):
                    found.add(s)
    return sorted(found)


def sentences_from(source: str) -> list[str]:
    """``stdlib-docstrings``, or the non-empty lines of a text file."""
    if source == STDLIB:
        return stdlib_sentences()
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"text source {source!r}: not a file; give a text file (one sentence per line) or {STDLIB!r}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) < 2:
        raise ConfigError(f"text source {source}: {len(lines)} non-empty line(s); need at least 2 (training, held out)")
    return lines


def split_held_out(sentences: list[str], every: int = 5) -> tuple[list[str], list[str]]:
    """(training, held-out): every ``every``-th sentence is held out."""
    if every < 2:
        raise ConfigError(f"held_out_every must be at least 2 (one sentence in N held out), got {every}")
    return [s for i, s in enumerate(sentences) if i % every], [s for i, s in enumerate(sentences) if i % every == 0]


def token_batches(tokenizer, texts: list[str], size: int, max_length: int = 64) -> list[dict]:
    """``texts`` tokenized in batches of ``size`` (padded to the batch's longest, cut at ``max_length``)."""
    return [dict(tokenizer(texts[i : i + size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for i in range(0, len(texts), size)]  # fmt: skip
