"""Results of many runs: one loader, one selection, then tables and figures.

    runs.py       run directories -> records; every file of a run read once.
    selection.py  which numbers count: the epoch, the split, the setting, the
                  bias, the protocol's roles.
    table.py      the table's rows and paired gains.
    formats.py    the table as markdown, LaTeX or csv, with its caption.
    series.py     the numbers each figure draws, from the rows and records.
    figures.py    the figures (the only module importing matplotlib).

`camri.report`, `camri.plots` and `launch.protocol` are their command lines.
"""
