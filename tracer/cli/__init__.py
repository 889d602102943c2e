"""The command line: one module per command, the click group in app.py.
Errors become one line and an exit status here (tracer.core.exitcodes)."""
