"""`fastseq info` and the CLI entry point work and report the build."""
import os
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


def test_missing_extension_says_how_to_build(tmp_path):
    # A copy of the package without the compiled module must fail with build instructions,
    # not a bare "cannot import name '_C'".
    import shutil
    import fastseq as pkg
    src = pkg.__path__[0]
    shutil.copytree(src, tmp_path / "fastseq", ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))
    # -S skips .pth files, so an editable install's import hook cannot redirect `fastseq`
    # to the built tree; torch's site-packages is appended by hand.
    import torch
    site_packages = os.path.dirname(os.path.dirname(torch.__file__))
    code = "import sys; sys.path.append(sys.argv[1]); import fastseq"
    proc = subprocess.run([sys.executable, "-S", "-c", code, site_packages], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "fastseq._C is not built" in proc.stderr and "--no-build-isolation" in proc.stderr
