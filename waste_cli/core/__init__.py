"""Leaves every stage builds on: errors and exit codes, the console, processes and signals,
devices, worker policy, safe files and names, structured formats, metrics and figures."""
