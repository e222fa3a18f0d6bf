"""Build the course website into build/site (or the folder given) from the notebooks' stored outputs.

`make site` runs this; so do the browser tests (tests/test_site.py), once per test session. Nothing is
executed and nothing is downloaded. Warnings are errors, so a notebook that does not render fails the build.
View the result with `python -m http.server -d build/site` and http://localhost:8000.
"""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent
OUTPUT = SOURCE.parent / "build" / "site"


def build(out: Path = OUTPUT, quiet: bool = False) -> Path:
    """Build the site into ``out``, every page afresh (Sphinx would not notice a change to site/course_site.py),
    and return ``out``.

    Raises:
        RuntimeError: Sphinx reported an error or a warning; its messages are on stderr.
    """
    from sphinx.cmd.build import build_main

    doctrees = out.with_name(out.name + ".doctrees")  # Sphinx's cache, beside the site rather than in it
    args = ["-b", "html", "-E", "-W", "--keep-going", "-d", str(doctrees), str(SOURCE), str(out)]
    if build_main(["-q", *args] if quiet else args) != 0:
        raise RuntimeError(f"the site did not build into {out}: see Sphinx's messages above")
    return out


if __name__ == "__main__":
    try:
        out = build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT)
    except (RuntimeError, OSError) as err:
        sys.exit(f"python site/build.py: error: {err}")
    print(f"site built: {out / 'index.html'} (view it: python -m http.server -d {out})")
