"""sdcloud module_utils: shared code for the project's modules and inventory plugin."""
