"""The corpus registry: a corpus name -> its scanner.

``scan_corpus("ravdess", root, include_song=True)`` is what the CLI and
jobs call; each scanner's own options are passed through and checked here,
so a misspelt option is an error that lists the valid ones.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

from avser.data import cremad, enterface, iemocap, ravdess
from avser.data.cremad import scan_cremad
from avser.data.enterface import scan_enterface
from avser.data.iemocap import scan_iemocap
from avser.data.manifest import ScanResult, corpus_root
from avser.data.ravdess import scan_ravdess
from avser.errors import AvserError

Scanner = Callable[..., ScanResult]


def scan_synthetic(root: str | Path, **options: Any) -> ScanResult:
    """The project's synthetic corpus (``avser.data.synthetic``), imported
    only when asked for: it is written separately and may be absent."""
    try:
        from avser.data.synthetic import scan_synthetic as scan
    except ImportError as exc:
        raise AvserError(
            f"the synthetic corpus scanner (avser.data.synthetic) cannot be imported: {exc}"
        ) from exc
    _check_options("synthetic", scan, options)
    return scan(root, **options)


SCANNERS: MappingProxyType[str, Scanner] = MappingProxyType(
    {
        "ravdess": scan_ravdess,
        "enterface": scan_enterface,
        "iemocap": scan_iemocap,
        "cremad": scan_cremad,
        "synthetic": scan_synthetic,
    }
)


# The file names each scanner keeps, for the message of a scan that found none.
EXPECTED_FILES: MappingProxyType[str, str] = MappingProxyType(
    {
        "ravdess": ravdess.EXPECTED_FILES,
        "enterface": enterface.EXPECTED_FILES,
        "iemocap": iemocap.EXPECTED_FILES,
        "cremad": cremad.EXPECTED_FILES,
        # Written here: the synthetic module is imported only on use.
        "synthetic": "spkNN_<emotion>_NNNNN.mp4 (and .csv landmarks) beside corpus.json, "
                     "as `avser synth --out DIR` writes them",
    }
)


def scanner_for(name: str) -> Scanner:
    scanner = SCANNERS.get(name.strip().lower())
    if scanner is None:
        raise AvserError(f"unknown corpus {name!r}; valid corpora are {sorted(SCANNERS)}")
    return scanner


def scan_corpus(name: str, root: str | Path, **options: Any) -> ScanResult:
    """Scan ``root`` as corpus ``name`` with that corpus's ``options``."""
    scanner = scanner_for(name)
    if scanner is not scan_synthetic:  # checks its own, known only once imported
        _check_options(name, scanner, options)
    return scanner(root, **options)


def _check_options(name: str, scanner: Scanner, options: dict[str, Any]) -> None:
    parameters = inspect.signature(scanner).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return  # the scanner takes any option and checks them itself
    accepted = [p.name for p in parameters if p.name != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise AvserError(
            f"unknown option(s) {unknown} for corpus {name!r}; "
            f"its options are {accepted or 'none'}"
        )


def require_clips(name: str, root: str | Path, result: ScanResult) -> ScanResult:
    """``result``, or an error saying where the scan looked and what it expected
    when it found no clip (a wrong root, or a corpus in another layout)."""
    if result.clips:
        return result
    name = name.strip().lower()
    seen = sum(result.problem_counts().values())
    skipped = f"; {seen} file(s) seen were not clips: {result.problem_counts()}" if seen else ""
    raise AvserError(
        f"no {name} clips found under {corpus_root(root, name)} (symbolic links followed); "
        f"expected {EXPECTED_FILES[name]}{skipped}; point the root at the folder that holds the corpus"
    )
