"""Demo model training on procedural phantoms (``pacsnode train``) and their evaluation."""
