"""``nca-np --version`` says the package's version."""

import configparser
from pathlib import Path

import pytest

from nca_np.cli import main


def test_version_is_the_packages(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    assert capsys.readouterr().out.strip() == f"nca_np {setup['metadata']['version']}"
