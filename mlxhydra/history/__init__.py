"""Reading runs back: the runs table, ``diff`` and ``replay``."""
