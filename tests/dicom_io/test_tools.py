"""DCMTK's programs found past pynetdicom's programs of the same names on PATH.

The look-alike is written here as pip writes pynetdicom's console scripts; DCMTK's real
programs (``make test`` installs them) are told by their own ``--version`` banner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from dicom_io.tools import (
    PYNETDICOM_APPS,
    DcmtkNotFoundError,
    dcmtk_program,
    is_pynetdicom_script,
    shadowing,
)


def lookalike(directory: Path, name: str = "storescu") -> Path:
    """pynetdicom's console script for ``name``, as pip installs it into a venv's bin."""
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / name
    p.write_text("#!/usr/bin/python3\n# -*- coding: utf-8 -*-\nimport re\nimport sys\n"
                 f"from pynetdicom.apps.{name}.{name} import main\n"
                 "if __name__ == '__main__':\n"
                 "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                 "    sys.exit(main())\n")
    p.chmod(0o755)
    return p


def _banner(path: str) -> str:
    return subprocess.run([path, "--version"], capture_output=True, text=True,
                          timeout=30).stdout


def test_the_names_are_pynetdicoms_apps() -> None:
    """The set is what the installed pynetdicom really ships as console scripts."""
    scripts = {e.name for e in entry_points(group="console_scripts")
               if e.value.startswith("pynetdicom.apps")}
    assert scripts == PYNETDICOM_APPS


def test_the_installed_scripts_are_recognised() -> None:
    """pynetdicom's own scripts in this environment (installed next to its python)."""
    import sys

    bin_dir = Path(sys.executable).parent
    for name in PYNETDICOM_APPS:
        assert is_pynetdicom_script(bin_dir / name), name
    assert not is_pynetdicom_script(sys.executable)  # a compiled program
    assert not is_pynetdicom_script(bin_dir / "no-such-program")


@pytest.mark.integration
def test_finds_dcmtk_behind_a_lookalike(tmp_path: Path) -> None:
    fake = lookalike(tmp_path / "venv-bin")
    path = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
    assert shutil.which("storescu", path=path) == str(fake)  # what a shell would run
    found = dcmtk_program("storescu", path=path)
    assert _banner(found).startswith("$dcmtk: storescu v")  # DCMTK's, by its own word
    assert shadowing("storescu", path=path) == [str(fake)]


@pytest.mark.integration
def test_nothing_shadows_on_the_system_path() -> None:
    found = dcmtk_program("storescp", path="/usr/bin")
    assert found == "/usr/bin/storescp" and _banner(found).startswith("$dcmtk: storescp v")
    assert shadowing("storescp", path="/usr/bin") == []


def test_only_a_lookalike_is_a_clear_error(tmp_path: Path) -> None:
    fake = lookalike(tmp_path / "bin")
    with pytest.raises(DcmtkNotFoundError,
                       match=rf"only pynetdicom's {fake}, which takes other options.*dcmtk"):
        dcmtk_program("storescu", path=str(fake.parent))
    assert shadowing("storescu", path=str(fake.parent)) == [str(fake)]
    with pytest.raises(DcmtkNotFoundError, match=r"DCMTK's echoscu is not on PATH: install"):
        dcmtk_program("echoscu", path=str(tmp_path / "empty"))


def test_files_that_are_not_programs_are_passed_over(tmp_path: Path) -> None:
    """A file that is not executable and a directory of the name are not programs; an
    unreadable one is not taken for pynetdicom's."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "storescu").write_bytes(b"\x7fELF")
    (tmp_path / "b" / "storescu").mkdir(parents=True)
    path = os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(DcmtkNotFoundError, match="is not on PATH: install"):
        dcmtk_program("storescu", path=path)
    other = tmp_path / "c" / "storescu"
    other.parent.mkdir()
    other.write_bytes(b"\x7fELF\x02\x01\x01")
    other.chmod(0o755)
    assert dcmtk_program("storescu", path=f"{path}{os.pathsep}{other.parent}") == str(other)


def test_a_script_that_is_not_pynetdicoms_is_taken(tmp_path: Path) -> None:
    """A site's wrapper around DCMTK's program is DCMTK's as far as a shell is concerned."""
    d = tmp_path / "site-bin"
    d.mkdir()
    wrapper = d / "storescu"
    wrapper.write_text("#!/bin/sh\nexec /usr/bin/storescu --log-level warn \"$@\"\n")
    wrapper.chmod(0o755)
    path = os.pathsep.join([str(lookalike(tmp_path / "venv-bin").parent), str(d)])
    assert dcmtk_program("storescu", path=path) == str(wrapper)
