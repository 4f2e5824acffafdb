"""bench/run_all.py writes docs/benchmarks.md: its own sections are written anew, hand-written ones are kept."""
from bench.run_all import Run, machine, write_doc

TABLE = "| figure | target | measured |\n|---|---|---|\n| pickup | ≤ 50 ms | 3 ms |\n"


def test_a_new_run_rewrites_the_figures_and_keeps_the_hand_written_sections(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Figures\n\n| old | row |\n\n## Issue 13: before and after\n\n| a | b |\n"
                   "\nwhy the ratio stops where it does\n\n## Targets\n\n- old target line\n\n## Runs\n\nold runs\n")
    run = Run(bench="bench_worker.py", command=".venv/bin/python bench/bench_worker.py", seconds=1.0, returncode=0,
              output=TABLE)
    write_doc(doc, [run], machine(), (0.1, 0.2), quick=False, elapsed=60)
    text = doc.read_text()
    assert "| old | row |" not in text and "old target line" not in text and "old runs" not in text
    assert "- pickup: target ≤ 50 ms, measured 3 ms — **met**" in text
    hand = "## Issue 13: before and after\n\n| a | b |\n\nwhy the ratio stops where it does\n"
    assert text.count(hand) == 1
    assert text.index("## Figures") < text.index(hand) < text.index("## Targets")
    write_doc(doc, [run], machine(), (0.1, 0.2), quick=False, elapsed=60)  # and again: kept once, not doubled
    assert doc.read_text().count(hand) == 1


def test_only_tables_headed_figure_target_measured_are_figures():
    from bench.run_all import table_rows
    output = ("| client | N | fds idle |\n|---|---|---|\n| token | 100 | 143 fds, 100 held |\n\n"
              "| figure | target | measured |\n|---|---|---|\n| uploads still held | 0 | 0 (33 fds open) |\n")
    assert table_rows(output) == [("uploads still held", "0", "0 (33 fds open)")]
