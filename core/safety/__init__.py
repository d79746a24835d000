"""Untrusted input: the path and string rules every reader and writer shares (`paths`), the
isolated reader child (`isolation`), pickle structure checks (`pickle_guard`). Imports nothing
of the engine but `errors`.
"""
