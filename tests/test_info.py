"""`fastseq info` and the CLI entry point work and report the build."""
import subprocess
import sys

import fastseq
from fastseq.cli import main


def test_info_reports_build(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CUDA kernels compiled in" in out
    assert ("yes" if fastseq._C.built_with_cuda() else "no") in out
    assert "CPU ISA" in out


def test_python_dash_m_info():
    proc = subprocess.run([sys.executable, "-m", "fastseq.info"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "torch" in proc.stdout
