"""The Colab set-up: helpers.course.colab.colab_setup with a fake command runner, and the notebooks' set-up cell."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import types
from importlib import metadata
from pathlib import Path

import pytest

from helpers.course import colab

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """A stand-in for subprocess.run that records each command and can act like ``git clone`` and, on the versions
    of a faked session (:func:`_session`), like ``pip install``."""

    def __init__(self, clone_creates: dict[str, str] | None = None, fail_on: str | None = None,
                 versions: dict[str, str] | None = None, installs: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[list[str], dict[str, object]]] = []
        self.clone_creates = clone_creates or {}
        self.fail_on = fail_on
        self.versions, self.installs = versions, installs or {}

    def __call__(self, cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        self.calls.append((list(cmd), kwargs))
        if self.fail_on is not None and self.fail_on in cmd:
            raise subprocess.CalledProcessError(1, cmd)
        if cmd[:2] == ["git", "clone"]:
            target = Path(cmd[-1])
            for relative, content in self.clone_creates.items():
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                (target / relative).write_text(content, encoding="utf-8")
        if cmd[1:4] == ["-m", "pip", "install"] and self.versions is not None:
            self.versions.update(self.installs)
        return subprocess.CompletedProcess(cmd, 0)


def _session(monkeypatch: pytest.MonkeyPatch, imported: tuple[str, ...], versions: dict[str, str]) -> dict[str, str]:
    """Make this process look like a session that has imported the modules ``imported`` among those of
    colab.REPLACEABLE (and not the others), with the distributions ``versions`` installed; returns ``versions``,
    which the install of a Recorder given it updates."""
    for module in colab.REPLACEABLE.values():
        if module in imported:
            monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
        else:
            monkeypatch.delitem(sys.modules, module, raising=False)
    real = metadata.version

    def version(name: str) -> str:  # a version of None: the distribution has no metadata
        if name in versions and versions[name] is None:
            raise metadata.PackageNotFoundError(name)
        return versions[name] if name in versions else real(name)

    monkeypatch.setattr(metadata, "version", version)
    return versions


@pytest.fixture
def not_colab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)


@pytest.fixture
def on_colab(not_colab: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-test")
    monkeypatch.setattr(sys, "path", list(sys.path))  # colab_setup extends sys.path; undo it afterwards


def test_in_colab_detects_the_module_or_the_environment(not_colab: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert colab.in_colab() is False
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20260101-060000_RC00")
    assert colab.in_colab() is True
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert colab.in_colab() is True


def test_outside_colab_setup_runs_nothing(not_colab: None, tmp_path: Path) -> None:
    run = Recorder()
    status = colab.colab_setup(target=tmp_path / "clone", run=run)
    assert run.calls == []
    assert "Not running on Google Colab" in status
    assert not (tmp_path / "clone").exists()


def test_on_colab_setup_clones_installs_and_makes_importable(on_colab: None, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "clone"
    run = Recorder(clone_creates={"pyproject.toml": "", "colab_probe_pkg/__init__.py": "WHERE = 'clone'\n"})
    status = colab.colab_setup(repo_url="https://example.org/course.git", target=target, run=run)
    assert [cmd for cmd, _ in run.calls] == [
        ["git", "clone", "--depth", "1", "https://example.org/course.git", str(target)],
        [sys.executable, "-m", "pip", "install", "-q", "-e", str(target), *colab.kept_requirements()],
    ]
    assert all(kwargs == {"check": True} for _, kwargs in run.calls)
    assert str(target) in sys.path
    monkeypatch.delitem(sys.modules, "colab_probe_pkg", raising=False)
    probe = importlib.import_module("colab_probe_pkg")
    assert probe.WHERE == "clone"
    sys.modules.pop("colab_probe_pkg", None)
    assert status.startswith("Colab set-up done: cloned https://example.org/course.git")


def test_on_colab_an_existing_clone_is_only_installed(on_colab: None, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\n", encoding="utf-8")
    run = Recorder()
    status = colab.colab_setup(target=tmp_path, run=run)
    assert [cmd for cmd, _ in run.calls] == [colab.install_command(tmp_path)]
    assert "existing clone" in status


def test_on_colab_a_foreign_folder_is_not_overwritten(on_colab: None, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    run = Recorder()
    with pytest.raises(FileExistsError, match="holds something else"):
        colab.colab_setup(target=tmp_path, run=run)
    assert run.calls == []


def test_on_colab_a_failing_command_stops_the_setup(on_colab: None, tmp_path: Path) -> None:
    run = Recorder(fail_on="clone")
    before = list(sys.path)
    with pytest.raises(subprocess.CalledProcessError):
        colab.colab_setup(target=tmp_path / "clone", run=run)
    assert len(run.calls) == 1
    assert sys.path == before


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"repo_url": 42}, TypeError, "repo_url must be a string, got int"),
        ({"repo_url": " "}, ValueError, "non-empty git URL"),
        ({"run": "subprocess.run"}, TypeError, "run must be callable"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, error: type[Exception], message: str, not_colab: None) -> None:
    with pytest.raises(error, match=message):
        colab.colab_setup(**kwargs)


# --- the set-up cell, run in a separate interpreter ----------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import importlib.metadata, json, os, subprocess, sys, types
    cell = open(sys.argv[1], encoding="utf-8").read()
    # the runtime's distributions as the test gives them, the others as found (this interpreter may run without
    # site-packages); the cell's pip install changes them as the test says
    versions, installs = json.loads(os.environ["VERSIONS"]), json.loads(os.environ["INSTALLS"])
    real_version = importlib.metadata.version
    def fake_version(name):  # a version of None: the distribution has no metadata
        if name in versions and versions[name] is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name] if name in versions else real_version(name)

    importlib.metadata.version = fake_version
    managers = []
    if sys.argv[2] == "colab":
        sys.modules["google.colab"] = types.ModuleType("google.colab")
        sys.modules["google.colab"].output = types.SimpleNamespace(
            enable_custom_widget_manager=lambda: managers.append("on"))
    for module in filter(None, os.environ["IMPORTED"].split(",")):  # imported in the session before the set-up
        sys.modules[module] = types.ModuleType(module)
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append([list(cmd), kwargs])
        if cmd[:2] == ["git", "clone"]:
            os.makedirs(os.path.join(cmd[-1], "helpers"))
            with open(os.path.join(cmd[-1], "helpers", "__init__.py"), "w") as f:
                f.write("FROM_CLONE = True\\n")
        if cmd[1:4] == ["-m", "pip", "install"]:
            versions.update(installs)
        return subprocess.CompletedProcess(cmd, 0)

    subprocess.run = fake_run
    namespace = {}
    result = {"calls": calls, "widget_manager": managers}
    try:
        exec(compile(cell, "<set-up cell>", "exec"), namespace)
        result["from_clone"] = getattr(namespace["helpers"], "FROM_CLONE", False)
    except ImportError as error:
        result["error"] = str(error)
    print(json.dumps(result))
    """
)


def _run_cell(tmp_path: Path, mode: str, target: Path, with_helpers: bool, imported: tuple[str, ...] = (),
              versions: dict[str, str] | None = None, installs: dict[str, str] | None = None) -> dict:
    """Run the set-up cell in a new interpreter, on Colab (``mode="colab"``) or not (``"plain"``), in a session that
    has imported the modules ``imported``, with the distributions ``versions`` (besides the runtime's torch, as this
    process has it) which the cell's pip install changes to ``installs``."""
    assert colab.COLAB_CELL.count(colab.DEFAULT_TARGET) == 1
    cell = tmp_path / "cell.py"
    cell.write_text(colab.COLAB_CELL.replace(colab.DEFAULT_TARGET, str(target)), encoding="utf-8")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "COLAB_RELEASE_TAG"}}
    torch = colab.kept_requirements()[0].removeprefix("torch==")
    env.update(VERSIONS=json.dumps({"torch": torch, **(versions or {})}), INSTALLS=json.dumps(installs or {}),
               IMPORTED=",".join(imported))
    if with_helpers:
        command = [sys.executable, str(driver), str(cell), mode]
        env["PYTHONPATH"] = str(ROOT)
    else:  # -I -S: no site-packages and no working directory, so `helpers` cannot be found
        command = [sys.executable, "-I", "-S", str(driver), str(cell), mode]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *printed, last = done.stdout.strip().splitlines()
    return {**json.loads(last), "printed": printed}


def test_cell_outside_colab_with_helpers_installed_does_nothing(tmp_path: Path) -> None:
    result = _run_cell(tmp_path, "plain", tmp_path / "clone", with_helpers=True)
    assert result == {"calls": [], "widget_manager": [], "from_clone": False, "printed": []}
    assert not (tmp_path / "clone").exists()


def test_cell_outside_colab_without_helpers_says_how_to_install(tmp_path: Path) -> None:
    result = _run_cell(tmp_path, "plain", tmp_path / "clone", with_helpers=False)
    assert result["calls"] == []
    assert "pip install -e ." in result["error"]


def _base_install(target: Path) -> list[str]:
    """The cell's install: colab.install_command's, keeping torch alone (the base install does not touch protobuf,
    so only the quant extra's needs the protobuf pin)."""
    return [arg for arg in colab.install_command(target) if not arg.startswith("protobuf==")]


def test_cell_on_colab_clones_installs_and_imports(tmp_path: Path) -> None:
    target = tmp_path / "clone"
    result = _run_cell(tmp_path, "colab", target, with_helpers=False)
    assert result["calls"] == [
        [colab.clone_command(colab.REPO_URL, target), {"check": True}],
        [_base_install(target), {"check": True}],
    ]
    assert result["from_clone"] is True and result["widget_manager"] == ["on"]


def test_cell_on_a_colab_runtime_with_the_course_installed_only_turns_on_the_widget_manager(tmp_path: Path) -> None:
    # the next notebook, or after a restart: helpers imports and nothing is installed, in a session of its own
    result = _run_cell(tmp_path, "colab", tmp_path / "clone", with_helpers=True)
    assert result == {"calls": [], "widget_manager": ["on"], "from_clone": False, "printed": []}


#: Sessions that imported some of the packages an install may replace: (modules imported, versions installed before
#: the install, versions the install leaves, the packages the advice names). Colab's transformers 5.15 is inside the
#: course's range and is kept; its ipywidgets 7.7.1 is replaced by 8.
RESTARTS = [
    ((), {"ipywidgets": "7.7.1"}, {"ipywidgets": "8.1.9"}, ""),  # nothing imported: the new versions load
    (("transformers",), {"transformers": "5.15.0"}, {"ipywidgets": "8.1.9"}, ""),  # imported, but kept
    (("transformers", "google.protobuf"), {"transformers": "5.15.0", "protobuf": "5.29.6"}, {}, ""),
    (("ipywidgets",), {"ipywidgets": "7.7.1"}, {"ipywidgets": "8.1.9"}, "ipywidgets"),
    (("google.protobuf", "torchao"), {"protobuf": "5.29.6", "torchao": "0.10.0"}, {"protobuf": "7.36.2"}, "protobuf"),
    (("transformers", "ipywidgets", "torchao"), {"transformers": "4.57.1", "ipywidgets": "7.7.1", "torchao": "0.10.0"},
     {"transformers": "5.24.0", "ipywidgets": "8.1.9"}, "transformers, ipywidgets"),
    (("ipywidgets",), {"ipywidgets": None}, {"ipywidgets": "8.1.9"}, "ipywidgets"),  # imported, without metadata
]


@pytest.mark.parametrize(("imported", "versions", "installs", "names"), RESTARTS)
def test_cell_on_colab_says_to_restart_only_when_the_install_replaced_an_imported_package(
        tmp_path: Path, imported, versions, installs, names) -> None:
    result = _run_cell(tmp_path, "colab", tmp_path / "clone", with_helpers=False, imported=imported,
                       versions=versions, installs=installs)
    assert result["from_clone"] is True and len(result["calls"]) == 2
    assert result["printed"] == ([colab.RESTART_ADVICE.format(names=names)] if names else [])
    assert "restart it" in colab.RESTART_ADVICE and "Runtime > Restart session" in colab.RESTART_ADVICE


@pytest.mark.parametrize(("imported", "versions", "installs", "names"), RESTARTS)
def test_setup_function_says_to_restart_only_when_the_install_replaced_an_imported_package(
        on_colab: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, imported, versions, installs, names) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\n", encoding="utf-8")
    session = _session(monkeypatch, imported, dict(versions))
    status = colab.colab_setup(target=tmp_path, run=Recorder(versions=session, installs=installs))
    done = (f"Colab set-up done: using the existing clone in {tmp_path}, installed it with pip install -e and added "
            "it to this kernel.")
    assert status == (f"{done} {colab.RESTART_ADVICE.format(names=names)}" if names else done)


def test_installing_an_extra_says_to_restart_only_when_it_replaced_an_imported_package(
        on_colab: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(colab, "import_quietly", lambda: None)  # the faked modules are not to be imported
    done = "Colab: installed the course's [quant] extra (bitsandbytes, torchao, onnxruntime, onnx, onnx-ir)."
    session = _session(monkeypatch, ("torchao", "transformers"), {"torchao": "0.10.0", "transformers": "5.15.0"})
    assert colab.install_extra("quant", target=tmp_path, run=Recorder(versions=session, installs={
        "torchao": "0.18.0", "onnx": "1.22.0"})) == f"{done} {colab.RESTART_ADVICE.format(names='torchao')}"
    session = _session(monkeypatch, ("transformers", "google.protobuf"), {"transformers": "5.15.0",
                                                                         "protobuf": "5.29.6"})
    assert colab.install_extra("quant", target=tmp_path, run=Recorder(versions=session, installs={
        "torchao": "0.18.0", "onnx": "1.22.0"})) == done


def test_cell_on_colab_reuses_an_existing_clone(tmp_path: Path) -> None:
    target = tmp_path / "clone"
    (target / "helpers").mkdir(parents=True)
    (target / "helpers" / "__init__.py").write_text("FROM_CLONE = True\n", encoding="utf-8")
    result = _run_cell(tmp_path, "colab", target, with_helpers=False)
    assert result["calls"] == [[_base_install(target), {"check": True}]]
    assert result["from_clone"] is True


def test_cell_names_the_repository_once_and_compiles() -> None:
    assert colab.COLAB_CELL.count(colab.REPO_URL) == 1
    compile(colab.COLAB_CELL, "<set-up cell>", "exec")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert colab.REPO_URL == project["urls"]["Repository"]  # set once, in pyproject.toml
    assert colab.colab_badge_url("01_setup.ipynb") == (
        "https://colab.research.google.com/github/" + colab.REPO_URL.removeprefix("https://github.com/")
        + "/blob/main/notebooks/01_setup.ipynb")


# --- install_extra ---------------------------------------------------------------------------------------


def test_install_extra_on_colab_pip_installs_the_extra_of_the_clone_keeping_the_running_torch(
        on_colab: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from helpers.grounding.quantization import import_quietly

    import_quietly()  # bitsandbytes and torchao import once, seeing the real torch version
    # Colab's CUDA build: pip must be asked for exactly this torch, local label included, or it may replace it
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.5.1+cu121"))
    run = Recorder()
    message = colab.install_extra("quant", target=tmp_path, run=run)
    assert run.calls == [([sys.executable, "-m", "pip", "install", "-q", "-e", f"{tmp_path}[quant]",
                           "torch==2.5.1+cu121", f"protobuf=={metadata.version('protobuf')}"], {"check": True})]
    assert "bitsandbytes, torchao" in message


def test_every_install_keeps_the_runtimes_torch_and_protobuf(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx >= 1.23 (of the quant extra) asks for protobuf >= 6.31.1: without a pin pip replaced Colab's 5.29.6 by
    7.x, and its own packages' requirements broke (a red block of dependency conflicts). Kept, pip picks an onnx
    that takes it."""
    import torch

    assert colab.install_command("/c")[-2:] == [f"torch=={torch.__version__}",
                                                f"protobuf=={metadata.version('protobuf')}"]
    monkeypatch.delitem(sys.modules, "torch")  # the set-up cell runs before anything imported torch
    versions = {"torch": "2.5.1+cu121", "protobuf": "5.29.6"}

    def version(name: str) -> str:
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(metadata, "version", version)
    assert colab.install_command("/c") == [sys.executable, "-m", "pip", "install", "-q", "-e", "/c",
                                           "torch==2.5.1+cu121", "protobuf==5.29.6"]
    del versions["protobuf"]  # no protobuf installed: nothing to keep
    assert colab.kept_requirements() == ["torch==2.5.1+cu121"]
    assert 'version("torch")' in colab.COLAB_CELL


def test_installing_an_extra_on_colab_names_what_the_installed_course_declares_for_it(
        on_colab: None, tmp_path: Path) -> None:
    """colab.EXTRAS is computed from pyproject.toml, so comparing it with pyproject.toml again read one file twice.
    Here what install_extra does on Colab (pip install -e "clone[extra]", and the packages its message names) is
    compared with the installed course's metadata: the extras and their packages as pip recorded them."""
    from importlib import metadata

    from packaging.requirements import Requirement

    info = metadata.metadata(colab.DISTRIBUTION)
    assert list(colab.EXTRAS) == ["quant"]
    for extra in colab.EXTRAS:
        assert extra in info.get_all("Provides-Extra")
        wanted = [req.name for req in map(Requirement, info.get_all("Requires-Dist"))
                  if req.marker and req.marker.evaluate({"extra": extra}) and not req.marker.evaluate({"extra": ""})]
        run = Recorder()
        message = colab.install_extra(extra, target=tmp_path, run=run)
        assert [cmd[cmd.index("-e") + 1] for cmd, _ in run.calls] == [f"{tmp_path}[{extra}]"]
        assert wanted and message.endswith(f" extra ({', '.join(wanted)}).")


def test_extra_packages_are_read_from_pyproject_or_else_from_the_installed_metadata(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a clone, pyproject.toml is read (an edit there shows at once); without one, the installed metadata."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\noptional-dependencies = {quant = ["onnx>=1", "extra-pkg[cli]>=2; python_version>\'3\'"]}\n',
        encoding="utf-8")
    monkeypatch.setattr(colab, "repo_root", lambda: tmp_path)
    assert colab.extra_packages("quant") == ("onnx", "extra-pkg")
    with pytest.raises(LookupError, match=r"no \[gpu\] extra"):
        colab.extra_packages("gpu")
    monkeypatch.setattr(colab, "repo_root", lambda: tmp_path / "installed-without-a-clone")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    for extra, specs in extras.items():
        assert colab.extra_packages(extra) == tuple(re.split(r"[<>=!~ \[]", spec)[0] for spec in specs)
    with pytest.raises(LookupError, match=r"no \[gpu\] extra"):
        colab.extra_packages("gpu")


def test_install_extra_elsewhere_installs_nothing_and_reports(not_colab: None, monkeypatch) -> None:
    from importlib import metadata

    run = Recorder()
    assert colab.install_extra("quant", run=run) == ("Not on Colab: bitsandbytes, torchao, onnxruntime, onnx, onnx-ir "
                                                     "are installed.")
    real = metadata.version

    def without_torchao(name: str) -> str:
        if name == "torchao":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", without_torchao)
    assert "torchao missing here; add them with pip install -e '.[quant]'" in colab.install_extra("quant", run=run)
    assert run.calls == []
    with pytest.raises(ValueError, match="extra must be one of 'quant', got 'gpu'"):
        colab.install_extra("gpu", run=run)


def test_install_extra_on_colab_installs_into_the_clone_helpers_came_from(on_colab: None) -> None:
    from helpers.course.paths import repo_root

    calls = []
    colab.install_extra("quant", run=lambda args, check: calls.append(args))
    assert calls[0][calls[0].index("-e") + 1] == f"{repo_root()}[quant]"


def test_the_playground_turns_on_colabs_widget_manager_on_colab_only(not_colab: None, monkeypatch, tiny_model) -> None:
    """Colab ships ipywidgets 7 and draws the course's ipywidgets 8 only through its custom widget manager."""
    from helpers.course.playground import Playground

    calls: list[str] = []
    output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append("enabled"))
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")  # type: ignore[attr-defined]
    google.colab.output = output  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    model, processor = tiny_model
    assert colab.enable_widgets() is False  # google.colab not imported, no COLAB_RELEASE_TAG
    Playground(model, processor)
    assert calls == []
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    Playground(model, processor)
    assert calls == ["enabled"]
