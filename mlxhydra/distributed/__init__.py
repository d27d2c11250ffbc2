"""The distributed world: this process's rank, the ranks' reports to rank 0, and ``mlxhydra launch``."""
