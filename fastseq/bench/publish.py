"""`make bench-full` / `python -m fastseq.bench.publish`: on an idle machine, regenerates
every published benchmark: the Markdown table and JSON of each suite under
benchmarks/results/ (named with the CPU and threads), its plot under docs/img/, and
README.md's "Measured" table from the full suite's JSON."""
import argparse
import os
import re
import sys

import torch

from ..info import cpu_isa
from ..cli import main as fastseq_main
from . import readme
from .machine import BUSY_LOAD_PER_CORE
from .report import read_json

COMMAND = "make bench-full"


def cpu_slug():
    """'Intel(R) Xeon(R) Platinum 8480+' -> 'intel-xeon-platinum-8480'."""
    model = re.sub(r"\((R|TM|tm)\)|CPU|Processor|@.*", " ", cpu_isa()[1] or "unknown-cpu")
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--results", default="benchmarks/results", help="folder of the tables and JSON")
    parser.add_argument("--img", default="docs/img", help="folder of the plots")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--allow-busy", action="store_true", help="measure even when the machine is loaded")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load > BUSY_LOAD_PER_CORE * cores and not args.allow_busy:
        print(f"publish: load {load:.2f} on {cores} cores: published numbers need an idle machine "
              f"(stop the other jobs, or --allow-busy)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    stem = f"{cpu_slug()}_t{torch.get_num_threads()}"
    out = {}
    for suite in ("small", "full", "scaling"):
        md, js = (os.path.join(args.results, f"{suite}_{stem}.{ext}") for ext in ("md", "json"))
        png = os.path.join(args.img, f"bench_{suite}.png")
        code = fastseq_main(["bench", "--suite", suite, "--threads", str(torch.get_num_threads()),
                             "--out", md, "--json", js, "--plot", png])
        if code:
            return code
        out[suite] = md, js, png
    # Links relative to the README's folder, so they work on GitHub and in a checkout.
    rel = lambda p: os.path.relpath(p, os.path.dirname(os.path.abspath(args.readme)))
    (md, js, png), scaling_png = out["full"], out["scaling"][2]
    section = readme.measured_section(read_json(js), rel(md), [("ratio and share of peak per case", rel(png)),
                                                             ("scaling curves", rel(scaling_png))], COMMAND)
    readme.fill(args.readme, section)
    print(f"wrote {args.readme} (measured table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
