"""Untrusted input and output, bounded: opening paths, the limited child process, atomic writes and locks."""
