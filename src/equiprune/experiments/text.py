"""English sentences for distilling and calibrating language models, available offline.

``stdlib-docstrings``: the docstrings of about 170 modules of Python's standard library, their
classes, functions and methods, split into sentences (about 8,000 on Python 3.11, in a fixed
order on every machine with the same Python). Or a text file of your own, one sentence (or
passage) per line.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
import warnings
from pathlib import Path

from equiprune.errors import ConfigError

STDLIB = "stdlib-docstrings"
STDLIB_MODULES = """os json collections itertools functools pathlib re string textwrap argparse logging subprocess
shutil random statistics datetime decimal fractions csv sqlite3 threading asyncio unittest typing dataclasses enum
heapq bisect zipfile tarfile gzip hashlib hmac secrets socket ssl html calendar configparser contextlib copy pickle
pprint inspect ast tokenize difflib email.message http.client urllib.parse xml.etree.ElementTree abc array atexit
base64 bdb binascii builtins cProfile cmath cmd code codecs codeop colorsys compileall contextvars copyreg dis doctest
errno faulthandler filecmp fileinput fnmatch ftplib genericpath getopt getpass gettext glob graphlib imaplib io
ipaddress keyword linecache locale mailbox marshal math mimetypes modulefinder netrc ntpath numbers opcode operator
optparse pdb pickletools pkgutil platform plistlib poplib posixpath profile pstats py_compile pyclbr queue quopri
reprlib rlcompleter runpy sched shelve shlex signal smtplib socketserver stat stringprep struct symtable sys sysconfig
tabnanny tempfile time timeit token trace traceback tracemalloc types unicodedata uuid warnings wave weakref zipapp
zlib""".split()


def _documented(module) -> list:
    """The module, its classes and functions, and its classes' methods."""
    found = [module]
    for _, value in inspect.getmembers(module):
        if inspect.isclass(value) or inspect.isfunction(value):
            found.append(value)
        if inspect.isclass(value):
            found += [m for _, m in inspect.getmembers(value) if inspect.isfunction(m) or inspect.ismethoddescriptor(m)]
    return found


def stdlib_sentences() -> list[str]:
    """Sentences of 40 to 300 characters, mostly letters, from the standard library's docstrings, sorted."""
    found = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated modules and members warn on import or access
        for name in STDLIB_MODULES:
            for obj in _documented(importlib.import_module(name)):
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
