"""Output for people and machines: the table and JSON-lines renderers, the
Output that writes them, escaping of text that came from a process, and
durations. Pure functions of core/ records, tested without a kernel."""
