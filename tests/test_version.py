"""``nca-np --version`` says the package's version, which setup.cfg reads
from ``nca_np.__version__`` (one source)."""

import configparser
from importlib import metadata
from pathlib import Path

import pytest

import nca_np
from nca_np.cli import main


def test_version_is_the_packages(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"nca_np {nca_np.__version__}"
    assert metadata.version("nca_np") == nca_np.__version__


def test_setup_cfg_reads_the_version_from_the_package():
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    assert setup["metadata"]["version"] == "attr: nca_np.__version__"
