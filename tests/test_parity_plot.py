"""The parity plot: ``ParityReport.plot`` and ``polybundle parity --plot`` (issue 17 item 5).

Each role gets a scatter of its outputs against the reference and a histogram
of the errors; matplotlib comes from the ``polybundle[plot]`` extra and is
imported only when a plot is drawn.
"""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest
import torch

import polybundle
from polybundle.errors import PolybundleError, WriteError
from polybundle.tools.cli import main
from polybundle.tools.parity import ParityReport, compare

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@polybundle.architecture("plot-encoder", backend="torch", replace=True)
def build_encoder(config):
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh())


@polybundle.architecture("plot-head", backend="torch", replace=True)
def build_head(config):
    return torch.nn.Linear(4, 2)


@pytest.fixture
def bundle(tmp_path):
    """A two-role PyTorch bundle with stored parity inputs and outputs."""
    torch.manual_seed(0)
    models = {"encoder": polybundle.build("plot-encoder", {}, backend="torch"),
              "head": polybundle.build("plot-head", {}, backend="torch")}
    path = tmp_path / "two.bundle"
    inputs = np.linspace(-2, 2, 64, dtype="f4").reshape(16, 4)
    polybundle.save(path, models, parity_inputs=inputs)
    return path


def png_size(path) -> tuple[int, int]:
    """Return a PNG's (width, height) after checking its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_draws_one_row_per_role(bundle, tmp_path):
    report = compare(bundle, backends=["torch"])
    assert set(report.samples) == {("encoder", "output", "torch"), ("head", "output", "torch")}
    written = report.plot(tmp_path / "parity.png")
    assert written == tmp_path / "parity.png"
    width, height = png_size(written)
    assert written.stat().st_size > 20_000  # two rows of two drawn panels, not an empty canvas
    one = compare(bundle, backends=["torch"], roles=["head"]).plot(tmp_path / "one.png")
    assert png_size(one)[0] == width and png_size(one)[1] < 0.7 * height


def test_cli_parity_plot(bundle, tmp_path, capsys):
    png = tmp_path / "cli.png"
    assert main(["parity", str(bundle), "--plot", str(png)]) == 0
    assert f"plot written to {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 20_000
    again = tmp_path / "json.png"
    assert main(["parity", str(bundle), "--json", "--plot", str(again)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["plot"] == str(again) and document["passed"]
    assert again.read_bytes()[:8] == PNG_SIGNATURE


def test_a_missing_matplotlib_names_the_extra(bundle, tmp_path, monkeypatch, capsys):
    report = compare(bundle, backends=["torch"])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(PolybundleError, match=r"pip install 'polybundle\[plot\]'"):
        report.plot(tmp_path / "nothing.png")
    assert main(["parity", str(bundle), "--plot", str(tmp_path / "cli.png")]) == 2
    assert "polybundle[plot]" in capsys.readouterr().err
    assert list(tmp_path.glob("*.png")) == []


def test_nothing_to_plot_and_a_missing_folder_are_typed_errors(bundle, tmp_path):
    with pytest.raises(PolybundleError, match="no outputs to plot"):
        ParityReport([], rtol=1e-5, atol=1e-6, reference="stored").plot(tmp_path / "x.png")
    report = compare(bundle, backends=["torch"])
    with pytest.raises(WriteError, match="No such file or directory"):
        report.plot(tmp_path / "missing" / "x.png")
