"""The report: Tables 1–3, Figures 2–3, the NCA's diagnostics, the
separation table, curves and metadata (docs/method.md#measures and
docs/method.md#protocol).

One module per concern:

- :mod:`~nca_np.report.tables`: the statistics of Tables 1–3 and their Markdown and CSV;
- :mod:`~nca_np.report.diagnostics`: the exact references and the NCA's convergence;
- :mod:`~nca_np.report.separation`: the BSS Eval table and its section;
- :mod:`~nca_np.report.figures`: every figure (matplotlib);
- :mod:`~nca_np.report.prose`: the text of report.md;
- :mod:`~nca_np.report.checks`: the checks of the inputs;
- :mod:`~nca_np.report.write`: :func:`write_report`, the report folder from plain data;
- :mod:`~nca_np.report.stage`: :func:`report_stage`, which gathers the saved results of
  one configuration and writes their report.

The names below are the report's public interface.
"""

from .checks import host_matrix
from .figures import FIGURE_FILES, SEPARATION_FIGURE
from .prose import COMPOSITION_READINGS, render_report
from .separation import (SEPARATION_CSV, SEPARATION_JSON, separation_csv, separation_markdown, separation_section,
                         summarise_separation, tod_r_series)
from .stage import report_stage
from .tables import (CSV_FILES, DECIMALS, TABLE1, TABLE2, TABLE3, ReportError, cell_statistics, describe_units,
                     display_name, format_cell, markdown_table, strategy_label, summarise, table_csv)
from .write import write_report

__all__ = ["COMPOSITION_READINGS", "CSV_FILES", "DECIMALS", "FIGURE_FILES", "SEPARATION_CSV", "SEPARATION_FIGURE",
           "SEPARATION_JSON", "TABLE1", "TABLE2", "TABLE3", "ReportError", "cell_statistics", "describe_units",
           "display_name", "format_cell", "host_matrix", "markdown_table", "render_report", "report_stage",
           "separation_csv", "separation_markdown", "separation_section", "strategy_label", "summarise",
           "summarise_separation", "table_csv", "tod_r_series", "write_report"]
