"""`fastseq info` / `python -m fastseq.info`: versions, build flags and the CPU's ISA."""
import os
import platform
import sys


def cpu_isa():
    """The widest SIMD level ATen dispatches to here, plus the CPU model name."""
    import torch

    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return torch.backends.cpu.get_cpu_capability(), model


def collect():
    import torch
    from . import _C, __version__

    isa, model = cpu_isa()
    rows = [
        ("fastseq", __version__),
        ("extension", os.path.abspath(_C.__file__)),
        ("compiler", _C.compiler),
        ("CUDA kernels compiled in", "yes" if _C.built_with_cuda() else "no"),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none"),
        ("CUDA device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"),
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("CPU", model),
        ("CPU ISA (ATen dispatch)", isa),
        ("torch threads", str(torch.get_num_threads())),
        ("CPU float32 GEMMs (recurrent layers)", _C.cpu_gemm_backend()),
    ]
    return rows


def main(argv=None):
    rows = collect()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def register(subparsers, train_subparsers):
    p = subparsers.add_parser("info", help="print versions, build flags and CPU ISA")
    p.set_defaults(func=lambda args: main())


if __name__ == "__main__":
    sys.exit(main())
