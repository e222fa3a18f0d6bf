"""Packaging and set-up: pyproject.toml, environment.yml, the Makefile, .ci/run, paths and the CLI."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
import types
from importlib import metadata
from pathlib import Path

import pytest
from nbval.plugin import get_sanitize_patterns
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import helpers
import helpers.__main__ as cli
from helpers.course import paths

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _tested_requirements(project: dict) -> list[str]:
    """What `make test` installs: the dependencies and the lab, test, quant and site extras."""
    extras = project["optional-dependencies"]
    return project["dependencies"] + extras["lab"] + extras["test"] + extras["quant"] + extras["site"]


def _specs(requirements: list[str]) -> dict[str, str]:
    """Map canonical package name to its version specifier string (sorted, comparable)."""
    out: dict[str, str] = {}
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name not in out, f"{req.name} is listed twice"
        out[name] = ",".join(sorted(str(s) for s in req.specifier))
    return out


# --- pyproject.toml -------------------------------------------------------------------------------------


def test_distribution_is_not_called_helpers_but_imports_as_helpers() -> None:
    project = _pyproject()["project"]
    assert canonicalize_name(project["name"]) != "helpers"
    assert project["name"] == "kosmos2-grounding-course"
    assert project["version"] == helpers.__version__


def test_every_sub_package_of_helpers_is_packaged() -> None:
    from setuptools import find_packages

    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "helpers").rglob("__init__.py")}
    assert {"helpers", "helpers.grounding", "helpers.world", "helpers.course"} <= on_disk
    assert set(find_packages(str(ROOT), include=include)) == on_disk


def test_the_package_map_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for room in ("grounding", "world", "course"):
        modules = sorted(p.stem for p in (ROOT / "helpers" / room).glob("*.py") if p.stem != "__init__")
        row = next(line for line in readme.splitlines() if line.startswith(f"| `helpers.{room}` |"))
        for module in modules:
            assert re.search(rf"^    {module}\b|, {module}\b", helpers.__doc__, re.M), \
                f"{room}.{module} not in the docstring"
            assert f"`{module}`" in row, f"{room}.{module} not in the README's package map"


def test_console_script_points_at_the_cli_main() -> None:
    target = _pyproject()["project"]["scripts"]["kosmos2-course"]
    module_name, _, attribute = target.partition(":")
    assert (module_name, attribute) == ("helpers.__main__", "main")
    assert getattr(cli, attribute) is cli.main


def test_version_names_the_distribution(capsys) -> None:
    """`kosmos2-course --version` said "python -m helpers 0.1.0": the version is the distribution's."""
    import helpers

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"{_pyproject()['project']['name']} {helpers.__version__}"


def test_torch_is_a_range_so_colab_keeps_its_own() -> None:
    specs = _specs(_pyproject()["project"]["dependencies"])
    assert specs["torch"].startswith(">=")
    torch = Requirement(f"torch{specs['torch']}").specifier  # transformers turns PyTorch off below 2.6
    assert torch.contains("2.6.0") and not torch.contains("2.5.1")
    assert "==" not in "".join(specs.values()), "runtime dependencies must be ranges, not pins"
    assert specs["transformers"] == "<6,>=5.0"
    assert "sentencepiece" not in specs


def test_the_colab_install_leaves_colabs_kernel_and_ipython_alone() -> None:
    """The Colab set-up cell runs `pip install -e` of the clone: the base dependencies must not upgrade the
    kernel packages that google-colab pins (ipykernel, IPython, the Jupyter server and client)."""
    project = _pyproject()["project"]
    pinned_by_colab = {"ipykernel", "ipython", "jupyterlab", "jupyter-server", "jupyter-client", "notebook", "tornado"}
    assert not pinned_by_colab & set(_specs(project["dependencies"]))
    assert {"jupyterlab", "ipykernel"} <= set(_specs(project["optional-dependencies"]["lab"]))


def test_installed_versions_satisfy_the_declared_ranges() -> None:
    project = _pyproject()["project"]
    for text in _tested_requirements(project):
        req = Requirement(text)
        installed = metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} not in {req}"


# --- environment.yml ------------------------------------------------------------------------------------


def test_environment_yml_is_generated_from_pyproject() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from environment import environment_yml
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = environment_yml()
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    pip = [line.removeprefix('      - "').removesuffix('"') for line in text.splitlines()
           if line.startswith("      - ")]
    assert pip == project["dependencies"] + extras["lab"] + ["-e ."]
    assert (ROOT / "environment.yml").read_text(encoding="utf-8") == text, "run `make environment.yml`"


def test_environment_yml_is_the_learners_and_says_how_to_add_the_rest() -> None:
    """Every extra in it failed the whole environment where one package has no wheel (bitsandbytes and onnxruntime
    on an Intel Mac) and pulled PyPI's CUDA torch on Linux: it holds the lab extra and says how to add the others."""
    text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    extras = _pyproject()["project"]["optional-dependencies"]
    for name in ("quant", "test", "site"):
        assert not [spec for spec in extras[name] if f'"{spec}"' in text], name
        assert f'#   pip install -e ".[{name}]"\n' in text
    assert "#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu conda env create -f environment.yml\n" in text


# --- constraints.txt ------------------------------------------------------------------------------------


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier  # exactly one pin per line
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_constraints_pin_every_dependency_inside_its_range() -> None:
    pins = _constraints()
    project = _pyproject()["project"]
    for text in _tested_requirements(project):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt (make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), f"pin {req.name}=={pins[name]} not in {req}"
    assert "kosmos2-grounding-course" not in pins


def test_the_tests_run_with_the_pinned_versions() -> None:
    pins = _constraints()
    project = _pyproject()["project"]
    for text in _tested_requirements(project):
        name = canonicalize_name(Requirement(text).name)
        installed = metadata.version(name).split("+")[0]  # torch's local label (+cpu) is not part of the pin
        assert installed == pins[name], f"{name} {installed} installed, constraints.txt pins {pins[name]}"


# --- import cost ----------------------------------------------------------------------------------------


def test_importing_helpers_and_the_cli_loads_no_torch_or_transformers() -> None:
    code = (
        "import json, sys\n"
        "import helpers, helpers.course.paths, helpers.course.colab, helpers.__main__ as cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'numpy', 'PIL') if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert "usage: python -m helpers" in done.stdout
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_after_importing_helpers_a_lesson_imports_transformers_without_notices() -> None:
    # with the quant extra installed, transformers imports torchao, whose import logs warnings about optional
    # kernels; a lesson's first cell must print nothing (nbval compares it)
    pytest.importorskip("torchao", reason="the notices come only from an installed torchao")
    code = "import helpers\nfrom transformers import AutoProcessor\nimport torchao\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stderr == "" and done.stdout == ""
    noisy = subprocess.run([sys.executable, "-c", "import torchao"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, check=True)
    assert noisy.stderr, "torchao imported alone printed nothing: this test no longer checks anything"


# --- paths ----------------------------------------------------------------------------------------------


def test_repo_paths_point_into_the_clone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.DATA_ENV_VAR, raising=False)
    assert paths.repo_root() == ROOT
    assert (paths.repo_root() / "helpers" / "course" / "paths.py").is_file()
    assert paths.data_dir() == ROOT / "data"
    assert paths.notebooks_dir() == ROOT / "notebooks"
    assert paths.bundled_model_dir() == ROOT / "data" / "kosmos2-tiny-world"


def test_data_dir_can_be_moved_with_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(tmp_path / "elsewhere"))
    assert paths.data_dir() == tmp_path / "elsewhere"
    assert paths.bundled_model_dir() == ROOT / "data" / "kosmos2-tiny-world"  # no copy there: the shipped one
    (tmp_path / "elsewhere" / "kosmos2-tiny-world").mkdir(parents=True)
    assert paths.bundled_model_dir() == tmp_path / "elsewhere" / "kosmos2-tiny-world"

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(paths.DATA_ENV_VAR, "relative/data")
    assert paths.data_dir() == tmp_path / "relative" / "data"

    monkeypatch.setenv(paths.DATA_ENV_VAR, "  ")
    assert paths.data_dir() == ROOT / "data"


def test_data_dir_that_is_a_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder", encoding="utf-8")
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(a_file))
    with pytest.raises(NotADirectoryError, match=r"\$KOSMOS2_COURSE_DATA.*not a folder"):
        paths.data_dir()


def test_a_data_folder_that_is_a_file_is_one_line_from_a_command(tmp_path, monkeypatch, capsys) -> None:
    from PIL import Image

    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder", encoding="utf-8")
    Image.new("RGB", (32, 32), "white").save(tmp_path / "white.png")
    monkeypatch.setenv(paths.DATA_ENV_VAR, str(a_file))
    assert cli.main(["ground", str(tmp_path / "white.png"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"python -m helpers ground: error: expected $KOSMOS2_COURSE_DATA to be a folder, but {a_file} exists and is "
        "not a folder")
    assert not (tmp_path / "out").exists()


# --- Makefile and CI ------------------------------------------------------------------------------------


# Variables that would change what the Makefile does if they came from the caller's environment.
_MAKE_INPUTS = {"PY", "TORCH_SPEC", "TORCH_INDEX", "CONSTRAINTS", "VENV", "VPY", "VPIP", "MAKEFLAGS", "MAKELEVEL",
                "MFLAGS", "HF_HUB_OFFLINE", "KOSMOS2_PROGRESS"}


def _torch_spec() -> str:
    """The Makefile's default torch requirement (``TORCH_SPEC ?= …``), read where it is set, so that a new torch
    there needs no edit of these tests."""
    found = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    assert found, "the Makefile sets no default TORCH_SPEC"
    return found[1]


def _make(*args: str) -> subprocess.CompletedProcess:
    """Run GNU make on the repository's Makefile with a neutral environment."""
    env = {k: v for k, v in os.environ.items() if k not in _MAKE_INPUTS}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def _fake_venv(tmp_path: Path, exit_code: int) -> tuple[Path, Path, Path]:
    """A venv folder whose install stamp is fresh and a fake interpreter that logs its arguments."""
    venv = tmp_path / "venv"
    venv.mkdir()
    stamp = venv / ".installed"
    stamp.touch()
    later = max((ROOT / name).stat().st_mtime for name in ("pyproject.toml", "constraints.txt")) + 10
    os.utime(stamp, (later, later))
    log = tmp_path / "calls.log"
    fake = tmp_path / "fakepython"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@ | progress=$KOSMOS2_PROGRESS offline=$HF_HUB_OFFLINE" >> "{log}"\n'
        f"exit {exit_code}\n",
        encoding="utf-8",
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return venv, fake, log


def test_make_run_and_test_call_the_venv_python(tmp_path: Path) -> None:
    venv, fake, log = _fake_venv(tmp_path, exit_code=0)
    assert _make("run", f"VENV={venv}", f"VPY={fake}").returncode == 0
    assert _make("test", f"VENV={venv}", f"VPY={fake}").returncode == 0
    assert _make("site", f"VENV={venv}", f"VPY={fake}").returncode == 0
    assert log.read_text(encoding="utf-8").splitlines() == [
        "-m helpers run --out outputs | progress= offline=",
        "-m pytest | progress= offline=",  # the test settings live in conftest.py, not in the Makefile
        "site/build.py | progress= offline=",
    ]


def test_the_test_settings_hold_for_plain_pytest() -> None:
    # conftest.py at the repository root sets them before anything else runs, whoever starts pytest
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["KOSMOS2_PROGRESS"] == "0"


def test_processes_the_tests_start_keep_their_temporary_files_in_the_sessions_folder() -> None:
    """A notebook kernel stopped at once by nbval never removes its ``TemporaryDirectory``: the session's folder,
    removed at its end, takes such leftovers (conftest.py), and its path stays short enough for Chromium's socket."""
    folder = Path(os.environ["TMPDIR"])
    assert folder.name.startswith("k2-tests-") and folder.is_dir() and len(str(folder)) < 40
    child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.mkdtemp(prefix='probe-'))"],
                           capture_output=True, text=True, check=True)
    assert Path(child.stdout.strip()).parent == folder
    from helpers.grounding.progress import interactive

    assert interactive() is False


def test_make_test_fails_when_the_tests_fail(tmp_path: Path) -> None:
    venv, fake, log = _fake_venv(tmp_path, exit_code=1)
    done = _make("test", f"VENV={venv}", f"VPY={fake}")
    assert done.returncode != 0
    assert log.read_text(encoding="utf-8").startswith("-m pytest")


def test_install_stamp_creates_the_venv_and_installs_torch_first(tmp_path: Path) -> None:
    venv = tmp_path / "fresh"
    done = _make("-n", f"VENV={venv}", "test")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        f"test -x {venv}/bin/python || python3 -m venv {venv}",
        f'{venv}/bin/pip install -c constraints.txt "{_torch_spec()}"',
        f'{venv}/bin/pip install -c constraints.txt -e ".[lab,test,quant,site]"',
        f"touch {venv}/.installed",
        f"{venv}/bin/python -m pytest",
    ]
    assert not venv.exists(), "a dry run must not create anything"


def test_torch_alone_comes_from_the_index_given() -> None:
    index = "https://download.pytorch.org/whl/cpu"
    done = _make("-n", "-B", f"TORCH_INDEX={index}", "install")
    assert done.returncode == 0, done.stderr
    pip = [line for line in done.stdout.splitlines() if " install " in line]
    assert pip == [f'.venv/bin/pip install -c constraints.txt --extra-index-url {index} "{_torch_spec()}"',
                   '.venv/bin/pip install -c constraints.txt -e ".[lab,test,quant,site]"']


def test_install_stamp_is_redone_when_pyproject_changes(tmp_path: Path) -> None:
    venv, fake, _ = _fake_venv(tmp_path, exit_code=0)
    older = (ROOT / "pyproject.toml").stat().st_mtime - 10
    os.utime(venv / ".installed", (older, older))
    done = _make("-n", f"VENV={venv}", "test")
    assert f'{venv}/bin/pip install -c constraints.txt -e ".[lab,test,quant,site]"' in done.stdout.splitlines()


def test_ci_installs_the_browser_then_runs_make_test(tmp_path: Path) -> None:
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    assert script.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\nset -euo pipefail\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "make.log"
    fake_make = bin_dir / "make"
    fake_make.write_text(f'#!/bin/sh\necho "$PWD: $*" >> "{log}"\nexit 7\n', encoding="utf-8")
    fake_make.chmod(0o755)
    fake_apt = bin_dir / "apt-get"
    fake_apt.write_text(f'#!/bin/sh\necho "apt-get $* ($DEBIAN_FRONTEND)" >> "{log}"\n', encoding="utf-8")
    fake_apt.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert done.returncode == 7, "the exit code of make test must be the exit code of .ci/run"
    assert log.read_text(encoding="utf-8").splitlines() == [
        "apt-get update -q (noninteractive)",
        "apt-get install -y -q chromium fonts-noto-cjk (noninteractive)",  # for the browser tests
        f"{ROOT}: test",
    ]


# --- command line ---------------------------------------------------------------------------------------


def _fake_module(monkeypatch: pytest.MonkeyPatch, command: str, result: object) -> list[object]:
    """Replace the module behind ``command`` with one whose ``main`` records its argument and returns ``result``."""
    calls: list[object] = []
    module = types.ModuleType(cli.COMMANDS[command][0])

    def main(arg: object) -> object:
        calls.append(arg)
        return result

    module.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return calls


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_cli_hands_every_further_argument_to_the_command(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    calls = _fake_module(monkeypatch, command, 0)
    assert cli.main([command, "--help", "image.png", "--out", "somewhere"]) == 0
    assert calls == [["--help", "image.png", "--out", "somewhere"]]


def test_cli_returns_the_command_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_module(monkeypatch, "run", 3)
    assert cli.main(["run"]) == 3
    _fake_module(monkeypatch, "run", None)
    assert cli.main(["run"]) == 0
    _fake_module(monkeypatch, "run", "ok")
    with pytest.raises(TypeError, match="int exit code or None, got str"):
        cli.main(["run"])


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_its_own_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert cli.main([command, "--help"]) == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: ")
    assert f"-m helpers {command}" in usage.splitlines()[0]


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_returns_argparse_code_itself(capsys: pytest.CaptureFixture[str], command: str) -> None:
    """Each command's ``main`` reads its options with checks.parse and returns 0 after --help and 2 after a bad
    option; ``run`` and ``notebooks`` raised SystemExit, which only ``python -m helpers`` turned into a code."""
    import importlib

    main = importlib.import_module(cli.COMMANDS[command][0]).main
    assert main(["--help"]) == 0
    assert main(["--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"^\S.* -m helpers {command}: error: ", err, re.M), err  # argparse's message


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--help"])
    assert stopped.value.code == 0
    listed = capsys.readouterr().out
    for command, (_, help_text) in cli.COMMANDS.items():
        assert re.search(rf"^\s+{command}\s+{re.escape(help_text.split()[0])}", listed, re.M), command
def test_cli_without_a_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: python -m helpers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        cli.main(["fly"])
    assert stopped.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


# --- nbval sanitizers -----------------------------------------------------------------------------------


def test_nbval_sanitizers_parse_and_do_what_they_say() -> None:
    text = (ROOT / "tests" / "nbval_sanitize.cfg").read_text(encoding="utf-8")
    patterns = get_sanitize_patterns(text)
    assert len(patterns) == len(re.findall(r"^\[\w+\]$", text, flags=re.MULTILINE)) > 0

    def sanitize(s: str) -> str:
        for regex, replace in patterns:
            s = re.sub(regex, replace, s)
        return s

    assert sanitize("<Image at 0x7f3a2b1c9d00>") == "<Image at 0xADDRESS>"
    assert sanitize("generated in 3.25 s") == sanitize("generated in 12 s") == "generated in ELAPSED"
    assert sanitize("3 squares and 2 snowmen") == "3 squares and 2 snowmen"
    assert sanitize("100%|##########| 8/8 [00:01<00:00, 6.1it/s]") == "PROGRESS-BAR"
    assert sanitize("saved /home/ana/kosmos2/outputs/boxes.png") == "saved <REPO>/outputs/boxes.png"
    assert sanitize("/content/kosmos2-grounding-course/data/x") == "<REPO>/data/x"
