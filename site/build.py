"""Build the course website into build/site (or the folder given) from the notebooks' stored outputs.

`make site` runs this; so do the browser tests (tests/test_site.py), once per test session. Nothing is
executed and nothing is downloaded. Warnings are errors, so a notebook that does not render fails the build.
View the result with `python -m http.server -d build/site` and http://localhost:8000.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent
OUTPUT = SOURCE.parent / "build" / "site"


def build(out: Path = OUTPUT, quiet: bool = False) -> Path:
    """Build the site into ``out``, every page afresh (Sphinx would not notice a change to site/course_site.py),
    and return ``out``.

    Sphinx always builds into ``build/site``, with its caches beside it in ``build/`` (myst-nb puts its
    ``jupyter_execute`` folder next to the site it builds); another ``out`` gets a copy, replacing an earlier
    build there, so nothing is left outside ``build/`` but ``out`` itself.

    Raises:
        RuntimeError: Sphinx reported an error or a warning; its messages are on stderr.
        ValueError: ``out`` is inside ``site/`` (the next build would read it as pages), or is a folder holding
            something other than an earlier build of the site.
    """
    from sphinx.cmd.build import build_main

    out = Path(out).resolve()
    if out == SOURCE or SOURCE in out.parents:
        raise ValueError(f"{out} is inside {SOURCE}, the site's sources: build somewhere else")
    if out != OUTPUT and out.exists() and (not out.is_dir()
                                           or (any(out.iterdir()) and not (out / ".buildinfo").is_file())):
        # Sphinx leaves .buildinfo in every HTML build; an index.html alone may be any web site's
        raise ValueError(f"{out} exists and is not an earlier build of the site: give a new or empty folder")
    doctrees = OUTPUT.with_name(OUTPUT.name + ".doctrees")  # Sphinx's cache, beside the site rather than in it
    args = ["-b", "html", "-E", "-W", "--keep-going", "-d", str(doctrees), str(SOURCE), str(OUTPUT)]
    if build_main(["-q", *args] if quiet else args) != 0:
        raise RuntimeError(f"the site did not build into {OUTPUT}: see Sphinx's messages above")
    if out != OUTPUT:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(OUTPUT, out)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python site/build.py [DIR]``: build the site, and copy it to ``DIR`` when one is given."""
    parser = argparse.ArgumentParser(prog="python site/build.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=OUTPUT, metavar="DIR",
                        help="a new or empty folder, or an earlier build, to copy the site to (default: build/site)")
    args = parser.parse_args(argv)
    try:
        out = build(args.out)
    except (RuntimeError, ValueError, OSError) as err:
        sys.exit(f"python site/build.py: error: {err}")
    print(f"site built: {out / 'index.html'} (view it: python -m http.server -d {out})")


if __name__ == "__main__":
    main()
