"""Exporting: the table of formats and their verified writers (formats), and `wastecls export`."""
