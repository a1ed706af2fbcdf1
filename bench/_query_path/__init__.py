"""The code of bench/query_path.py (which says what it measures), one module a part:

common       who asks whom for what, limits, labels, the error of a run that cannot go on
environment  the registry copy, the dev PKI's TLS keys, Redis, PostgreSQL, the machine,
             the checked-out code, the configuration of `tongban gateway serve`
children     the child process roles (--role region, one-process, echo)
processes    those children and `tongban gateway serve` as the client process sees them
cpu          CPU accounting and TCP connections from /proc
load         subjects to ask about; channels, tokens and a call factory per target
measure      the measured window and the closed and open loops
profiles     py-spy profiles summarised by area and frame
runner       the sequence of one run: each topology started and measured
results      the figures of a run (what --json writes)
report       the report printed from those figures
cli          the options and the run from start to end
"""
