"""Models shipped inside the package; each sub-folder is a ``model=<name>`` option."""
