"""Everything that touches Ray: the runtime, trainer actors, sweeps and streaming.

No other package imports `ray`; the CLI imports this package only inside the
commands that need it.
"""
