"""Grouping: when a study is complete (completion.py) and where it goes (routing.py)."""
