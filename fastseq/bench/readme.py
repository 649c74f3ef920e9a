"""README.md's "Measured" table, written from a `fastseq bench --json` record between the
markers <!-- bench:begin --> and <!-- bench:end --> (so it never drifts from its source)."""
from .report import SUMMARY_HEAD, markdown_table, noisy_line, summary_rows

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def measured_section(record, table_link, plot_links, command) -> str:
    m = record["machine"]
    cases = record["cases"]
    return "\n".join([
        f"Measured on {m['cpu']} ({m['isa']}), {m['threads']} threads on {m['cores']} cores, "
        f"load {m['load_avg']:.2f} at the start, {m['date']}; torch {m['torch']} ({m['blas']}); "
        f"float32 GEMM peak of this machine {m['gemm_peak_gflops']:.0f} GFLOP/s. "
        f"Command: `{command}` (runs `{record['command']}` and the other suites).",
        "",
        markdown_table(SUMMARY_HEAD, summary_rows(cases)),
        "",
        f"{noisy_line(cases)}. Every case: [{table_link}]({table_link}).",
        "",
        *(f"![{alt}]({link})" for alt, link in plot_links),
    ])


def fill(readme_path, section):
    with open(readme_path) as f:
        text = f.read()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme_path} has no {BEGIN} ... {END} markers to fill")
    text = text[:start + len(BEGIN)] + "\n" + section + "\n" + text[end:]
    with open(readme_path, "w") as f:
        f.write(text)
