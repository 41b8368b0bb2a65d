"""Text corpora that need no download: a code corpus from Python's own standard library.

    rnn-orch data fetch python_stdlib --out data/python_stdlib

char-rnn trained on the Linux source; this is the same kind of corpus, and every machine
that runs rnn-orch has one. The top-level modules of the running interpreter's standard
library (`<stdlib>/*.py`, no packages, no tests: about 4.7 MB in 168 files for Python
3.11) are copied as they are. SOURCE.json records the Python version and a sha256 of the
files in name order, the order `task.name: text` reads them in, since results on this
corpus compare only between runs on the same version.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sysconfig
from pathlib import Path

from pipelines.errors import DataError

CORPORA = ("python_stdlib",)


def write_corpus(name: str, out_dir: str | Path, stdlib: str | Path | None = None) -> Path:
    """Copy the corpus `name` into `out_dir` (new or empty) with SOURCE.json; the
    directory, which `task.path` takes as it is. `stdlib` is the library to copy
    (default: this interpreter's)."""
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; expected one of {', '.join(CORPORA)}.")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"Output directory {out_dir} already exists and is not empty; fetch "
                        "only writes into a new or empty directory. Remove it or pick another.")
    source = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = sorted(source.glob("*.py"))
    if not files:
        raise DataError(f"{source} holds no Python modules; expected a standard library.")
    text_dir = out_dir / "modules"
    text_dir.mkdir(parents=True)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
        shutil.copyfile(path, text_dir / path.name)
    (out_dir / "SOURCE.json").write_text(json.dumps({
        "corpus": name,
        "description": "the top-level modules of Python's standard library, a code corpus",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "stdlib": str(source),
        "files": len(files),
        "bytes": sum(path.stat().st_size for path in files),
        "sha256": digest.hexdigest(),
        "suggested_task": {"name": "text", "path": str(text_dir)},
    }, indent=1) + "\n")
    return text_dir
