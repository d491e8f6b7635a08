"""English sentences for distilling and calibrating language models, available offline.

``stdlib-docstrings``: the docstrings of about 130 modules of Python's standard library (those
written in Python), their classes, functions and methods, split into sentences (about 7,400 on
Python 3.11, in a fixed order on every machine with the same Python). Or a text file of your own,
one sentence (or passage) per line.
"""

from __future__ import annotations

import ast
import importlib.util
import random
import re
import sysconfig
from pathlib import Path

from equiprune.errors import ConfigError

STDLIB = "stdlib-docstrings"
STDLIB_MODULES = """os json collections functools pathlib re string textwrap argparse logging subprocess
shutil random statistics datetime decimal fractions csv sqlite3 threading asyncio unittest typing dataclasses enum
heapq bisect zipfile tarfile gzip hashlib hmac secrets socket ssl html calendar configparser contextlib copy pickle
pprint inspect ast tokenize difflib email.message http.client urllib.parse xml.etree.ElementTree abc
base64 bdb cProfile cmd code codecs codeop colorsys compileall contextvars copyreg dis doctest
filecmp fileinput fnmatch ftplib genericpath getopt getpass gettext glob graphlib imaplib io
ipaddress keyword linecache locale mailbox mimetypes modulefinder netrc ntpath numbers opcode operator
optparse pdb pickletools pkgutil platform plistlib poplib posixpath profile pstats py_compile pyclbr queue quopri
reprlib rlcompleter runpy sched shelve shlex signal smtplib socketserver stat stringprep struct symtable sysconfig
tabnanny tempfile timeit token trace traceback tracemalloc types uuid warnings wave weakref zipapp""".split()


def _sources(name: str) -> list[Path]:
    """The source files of a standard-library module (every module of a package, tests left out);
    none for a module built in C."""
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin == "frozen":  # os, io, codecs... are frozen into the interpreter
        origin = Path(sysconfig.get_path("stdlib"), *name.split(".")).with_suffix(".py")
        return [origin] if origin.is_file() else []
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    origin = Path(spec.origin)
    if not spec.submodule_search_locations:
        return [origin]
    return sorted(p for p in origin.parent.rglob("*.py") if not {"test", "tests"} & set(p.parts))


def _docstrings(path: Path):
    """The docstrings of a source file's module, classes and functions, read from its syntax tree."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def stdlib_sentences() -> list[str]:
    """Sentences of 40 to 300 characters, mostly letters, from the standard library's docstrings, sorted.

    Read from the modules' source files, not from the imported objects: libraries patch standard
    classes at import time (transformers adds methods to ``logging.Logger``), and the text must not
    depend on what else the process has imported."""
    found = set()
    for name in STDLIB_MODULES:
        for path in _sources(name):
            for doc in _docstrings(path):
                for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
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


def split_held_out(sentences: list[str], every: int = 5, seed: int | None = 0) -> tuple[list[str], list[str]]:
    """(training, held-out): every ``every``-th sentence is held out; the training sentences are
    shuffled with ``seed`` (None: kept in order), so that each batch of a sorted source (the
    docstrings are sorted) mixes topics, and the first batches, used for calibration, stand for all."""
    if every < 2:
        raise ConfigError(f"held_out_every must be at least 2 (one sentence in N held out), got {every}")
    training = [s for i, s in enumerate(sentences) if i % every]
    if seed is not None:
        random.Random(seed).shuffle(training)
    return training, [s for i, s in enumerate(sentences) if i % every == 0]


def token_batches(tokenizer, texts: list[str], size: int, max_length: int = 64) -> list[dict]:
    """``texts`` tokenized in batches of ``size`` (padded to the batch's longest, cut at ``max_length``)."""
    return [dict(tokenizer(texts[i : i + size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for i in range(0, len(texts), size)]  # fmt: skip
