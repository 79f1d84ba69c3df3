"""The ``pacsnode`` sub-commands, one module per subject; each function takes (settings, args)."""
