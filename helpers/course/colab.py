"""Setting the course up on Google Colab.

Every notebook starts with one set-up cell, :data:`COLAB_CELL`. Outside Colab it only checks that
``helpers`` is importable (install the course with ``pip install -e .`` from a clone). On Colab, where
nothing is installed yet, it clones this repository, installs it with ``pip install -e`` (keeping the
runtime's torch, and in this module's installs its protobuf too: :func:`kept_requirements`) and makes it
importable in the kernel that is already running.
On Colab, every time, it then turns on Colab's custom widget manager (:func:`enable_widgets`): the course
installs ipywidgets 8, newer than the 7.x Colab ships, and Colab draws version 8 only through that manager, so
without it the progress bars of ``load()``, ``ground()`` and the model download would not show.

That cell cannot use this module: on a fresh Colab runtime ``helpers`` is exactly what is missing. So the
cell carries the same few steps inline, and this module holds them as tested functions,
:func:`colab_setup` (the install) and :func:`enable_widgets`, for use once ``helpers`` is importable (for
example to re-install after a change of branch), together with the cell's text so the tests can run it.

Why the running kernel needs help: ``pip install -e`` registers the clone through a ``.pth`` file in
``site-packages``. Python reads ``.pth`` files only when an interpreter starts, so the notebook kernel that
ran the install does not see it. ``site.addsitedir(clone)`` adds the clone (whose top level holds the
``helpers`` package) for this kernel only; after a runtime restart the editable install alone is enough.

A module that the kernel imported *before* the install stays loaded in its old version. Of the packages Colab
ships, the installs replace few (:data:`REPLACEABLE`): the base install ipywidgets (the course asks for 8), the
``quant`` extra torchao (and protobuf, were it not kept), and either of them transformers only where Colab's is
outside the course's range; Colab's transformers (5.15 in 2026) is inside it and is kept. So the set-up notes
the versions of those the session has imported, installs, and says to restart the session only when the
install changed one of them (:data:`RESTART_ADVICE`; the cell, :func:`colab_setup` and :func:`install_extra`
all do so).
"""

from __future__ import annotations

import importlib
import json
import os
import site
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from packaging.requirements import Requirement

from helpers.course.paths import repo_root
from helpers.grounding.quantization import import_quietly, installed_version

DISTRIBUTION = "kosmos2-grounding-course"


def _project() -> dict[str, Any] | None:
    """The ``[project]`` table of the clone's ``pyproject.toml``, or ``None`` when there is no such file."""
    pyproject = repo_root() / "pyproject.toml"
    if not pyproject.is_file():
        return None
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]


def repository_url() -> str:
    """The course repository: ``[project.urls] Repository`` in ``pyproject.toml``, the one place it is set.

    Read from the clone's ``pyproject.toml``; from the installed package's metadata when there is none.
    """
    project = _project()
    if project is not None:
        return project["urls"]["Repository"]
    for entry in metadata.metadata(DISTRIBUTION).get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip()
    raise LookupError(f"no Repository URL in {repo_root() / 'pyproject.toml'} nor in the installed "
                      f"{DISTRIBUTION}'s metadata")


def extra_packages(extra: str) -> tuple[str, ...]:
    """The names of the packages in the course's optional extra ``extra`` (e.g. ``"quant"``), in their order:
    ``[project.optional-dependencies]`` in ``pyproject.toml``, the one place they are set.

    Read from the clone's ``pyproject.toml``; from the installed package's metadata when there is none.

    Raises:
        LookupError: the course has no extra of that name.
    """
    project = _project()
    if project is not None:
        requirements = [Requirement(text) for text in project.get("optional-dependencies", {}).get(extra, ())]
    else:  # the metadata lists every requirement, those of an extra marked `extra == "NAME"`
        requirements = [req for req in map(Requirement, metadata.requires(DISTRIBUTION) or [])
                        if req.marker is not None and req.marker.evaluate({"extra": extra})
                        and not req.marker.evaluate({"extra": ""})]
    if not requirements:
        raise LookupError(f"the course has no [{extra}] extra (expected a name in [project.optional-dependencies] "
                          "of pyproject.toml)")
    return tuple(req.name for req in requirements)


#: The course repository (set in pyproject.toml).
REPO_URL = repository_url()

#: Where the course is cloned on Colab.
DEFAULT_TARGET = "/content/kosmos2-grounding-course"

#: The distributions an install of the course may replace under a running kernel, each with the module a session
#: imports it as: ipywidgets (the base install asks for 8), torchao and protobuf (the ``quant`` extra; protobuf is
#: kept where it is installed, :func:`kept_requirements`), and transformers where the runtime's is outside the
#: course's range.
REPLACEABLE = {"transformers": "transformers", "ipywidgets": "ipywidgets", "torchao": "torchao",
               "protobuf": "google.protobuf"}

#: What the set-up says when the install changed the version of distributions (``{names}``) that the session had
#: imported before it.
RESTART_ADVICE = ("This install replaced {names}, which this session had already imported; it keeps running the old "
                  "code until you restart it (Runtime > Restart session) and run the notebook again.")

#: The exact source of the set-up cell that every notebook carries as its first code cell.
COLAB_CELL = f'''\
# Set-up: on Google Colab this installs the course (about a minute); elsewhere it only checks the install.
import sys
try:
    import helpers
except ImportError:
    if "google.colab" not in sys.modules:
        raise ImportError("helpers is not installed: run `pip install -e .` in a clone of the course") from None
    import os, site, subprocess
    repo = "{DEFAULT_TARGET}"
    if not os.path.isdir(repo):
        subprocess.run(["git", "clone", "--depth", "1", "{REPO_URL}", repo], check=True)
    from importlib.metadata import version  # torch pinned: pip must not replace Colab's CUDA build

    def installed(name):  # None for a package without metadata
        try:
            return version(name)
        except Exception:
            return None
    may_replace = {json.dumps(REPLACEABLE)}
    imported = {{name: installed(name) for name, module in may_replace.items() if module in sys.modules}}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", repo, "torch==" + version("torch")], check=True)
    site.addsitedir(repo)  # the running kernel does not read the new install's .pth file
    replaced = [name for name in imported if installed(name) != imported[name]]
    if replaced:  # imported before the install, which replaced them: this session still runs the old versions
        print("{RESTART_ADVICE}".format(names=", ".join(replaced)))
    import helpers
if "google.colab" in sys.modules:  # Colab draws ipywidgets 8 (progress bars, the playground) only through this
    from google.colab import output
    output.enable_custom_widget_manager()
'''

Runner = Callable[..., Any]


def colab_badge_url(notebook: str) -> str:
    """Where the "Open in Colab" badge of ``notebook`` (e.g. ``"01_setup.ipynb"``) points: its copy on GitHub."""
    return REPO_URL.replace("https://github.com/", "https://colab.research.google.com/github/", 1) + \
        f"/blob/main/notebooks/{notebook}"


def in_colab() -> bool:
    """Return True when running on Google Colab.

    Colab is recognised by its ``google.colab`` module having been imported (Colab kernels import it at
    start-up) or by the ``COLAB_RELEASE_TAG`` environment variable that Colab runtimes set.
    """
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def enable_widgets() -> bool:
    """On Colab, turn on its custom widget manager and return True; elsewhere do nothing and return False.

    The course's ipywidgets (8.x, for the playground) is newer than the 7.x that Colab ships, and Colab draws
    ipywidgets 8 only through that manager (``google.colab.output.enable_custom_widget_manager()``).
    """
    if not in_colab():
        return False
    from google.colab import output  # only importable on Colab

    output.enable_custom_widget_manager()
    return True


def clone_command(repo_url: str, target: str | os.PathLike[str]) -> list[str]:
    """Return the ``git clone`` command that fetches the course (shallow: history is not needed)."""
    return ["git", "clone", "--depth", "1", repo_url, str(target)]


def kept_requirements() -> list[str]:
    """The requirements that keep the runtime's own packages through an install of the course, part of every install
    command (:func:`install_command`; the set-up cell's base install carries the torch one, the only one it needs).

    * ``torch==VERSION`` for the torch this kernel runs (imported) or would import (installed), local label included
      (``torch==2.11.0+cu128``): pip then keeps the runtime's torch (Colab's CUDA build) and picks versions of the
      other packages that work with it, or fails saying which one does not, instead of replacing torch with another
      build, under a running kernel at that.
    * ``protobuf==VERSION`` when protobuf is installed: the newest onnx (of the ``quant`` extra) asks for a newer
      protobuf than Colab's, and replacing it broke the requirements of Colab's own packages (pip ended with a red
      block of dependency conflicts); with the pin pip picks an onnx that takes the installed protobuf.
    """
    torch = sys.modules.get("torch")
    kept = [f"torch=={torch.__version__ if torch is not None else metadata.version('torch')}"]
    protobuf = installed_version("protobuf")
    if protobuf is not None:
        kept.append(f"protobuf=={protobuf}")
    return kept


def install_command(target: str | os.PathLike[str]) -> list[str]:
    """Return the command that installs the clone (or ``clone[extra]``) in editable mode with the running
    interpreter's pip, keeping the runtime's torch and protobuf (:func:`kept_requirements`)."""
    return [sys.executable, "-m", "pip", "install", "-q", "-e", str(target), *kept_requirements()]


def imported_versions() -> dict[str, str | None]:
    """The installed versions of the :data:`REPLACEABLE` distributions whose module this session has imported
    (``None`` for one without metadata, which an install that adds it then replaces)."""
    return {name: installed_version(name) for name, module in REPLACEABLE.items() if module in sys.modules}


def restart_advice(before: dict[str, str | None]) -> str:
    """:data:`RESTART_ADVICE` naming the distributions of ``before`` (:func:`imported_versions`, noted before an
    install) whose installed version is no longer the one noted, or ``""`` when there is none."""
    replaced = [name for name, version in before.items() if installed_version(name) != version]
    return RESTART_ADVICE.format(names=", ".join(replaced)) if replaced else ""


def _install(target: str | os.PathLike[str], run: Runner) -> str:
    """Run :func:`install_command` of ``target`` with ``run``, let this kernel find what it installed, and return
    :func:`restart_advice` for the modules the session had imported before (``""`` when no restart is needed)."""
    before = imported_versions()
    run(install_command(target), check=True)
    importlib.invalidate_caches()
    return restart_advice(before)


def colab_setup(
    repo_url: str = REPO_URL,
    target: str | os.PathLike[str] = DEFAULT_TARGET,
    run: Runner = subprocess.run,
) -> str:
    """Install the course on Colab and make ``helpers`` importable in the running kernel.

    Steps, on Colab only: clone ``repo_url`` into ``target`` unless ``target`` already holds a clone
    (a folder with ``pyproject.toml``), ``pip install -e target torch==VERSION`` (:func:`install_command`), then
    ``site.addsitedir(target)`` so the kernel that is already running can import the package (see the module
    docstring for why).

    Args:
        repo_url: the git URL to clone.
        target: the folder to clone into.
        run: the function that runs a command, called like ``subprocess.run(cmd, check=True)``; tests pass
            a fake that records the commands.

    Returns:
        A one-line status message saying what was done (or that nothing was done outside Colab), ending with
        :data:`RESTART_ADVICE` when the install replaced a package the session had imported before.

    Raises:
        TypeError: ``repo_url`` is not a string or ``run`` is not callable.
        ValueError: ``repo_url`` is empty.
        FileExistsError: ``target`` exists but is not a clone of the course (it would not be overwritten).
        subprocess.CalledProcessError: a command failed (raised by ``run``).
    """
    if not isinstance(repo_url, str):
        raise TypeError(f"repo_url must be a string, got {type(repo_url).__name__}")
    if not repo_url.strip():
        raise ValueError("repo_url must be a non-empty git URL, got an empty string")
    if not callable(run):
        raise TypeError(f"run must be callable like subprocess.run, got {type(run).__name__}")
    if not in_colab():
        return "Not running on Google Colab: nothing to do (install from a clone with `pip install -e .`)."

    path = Path(target)
    if (path / "pyproject.toml").is_file():
        cloned = f"using the existing clone in {path}"
    elif path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(
            f"expected {path} to be missing, empty or a clone of the course (with pyproject.toml), "
            "but it holds something else; pass another target"
        )
    else:
        run(clone_command(repo_url, path), check=True)
        cloned = f"cloned {repo_url} into {path}"
    advice = _install(path, run)
    site.addsitedir(str(path))
    done = f"Colab set-up done: {cloned}, installed it with pip install -e and added it to this kernel."
    return f"{done} {advice}" if advice else done


#: The course's optional extras that a notebook may install, and the packages in each (read from pyproject.toml).
EXTRAS = {extra: extra_packages(extra) for extra in ("quant",)}


def install_extra(extra: str, target: str | os.PathLike[str] | None = None, run: Runner = subprocess.run) -> str:
    """Install one of the course's optional extras where the notebook runs; ``"quant"`` holds bitsandbytes,
    torchao and ONNX Runtime (with onnx and onnx-ir), for the quantized paths of ``load(quantization=...)``.

    On Colab it runs ``pip install -e "target[extra]" torch==VERSION protobuf==VERSION`` with the kernel's
    interpreter (the packages import in the running kernel at once); ``target`` defaults to the clone this
    ``helpers`` was installed from. The requirements on the runtime's torch and protobuf (:func:`kept_requirements`)
    keep pip from replacing Colab's CUDA torch with another build, or its protobuf with one its own packages do not
    take, when a package of the extra would ask for a newer one; the message ends with :data:`RESTART_ADVICE` when
    the install replaced a package the session had imported before (torchao, say). Elsewhere it installs nothing
    and says which of the packages are missing and how to add them from a clone.

    Raises:
        ValueError: ``extra`` is not one of :data:`EXTRAS`.
        subprocess.CalledProcessError: the install failed (raised by ``run``).
    """
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {', '.join(map(repr, EXTRAS))}, got {extra!r}")
    packages = EXTRAS[extra]
    if in_colab():
        target = repo_root() if target is None else target
        advice = _install(f"{target}[{extra}]", run)
        import_quietly()
        done = f"Colab: installed the course's [{extra}] extra ({', '.join(packages)})."
        return f"{done} {advice}" if advice else done
    import_quietly()
    missing = [name for name in packages if installed_version(name) is None]
    if missing:
        return (f"Not on Colab: {', '.join(missing)} missing here; add them with pip install -e '.[{extra}]' "
                "in your clone of the course.")
    return f"Not on Colab: {', '.join(packages)} are installed."
