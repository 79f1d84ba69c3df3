"""The ground layer: domain types, settings and shared enums.

Every other package imports from here; this package imports nothing of ours, so a value object or
a setting can be used by a pure function in any stage without dragging a database or a model in.
"""
