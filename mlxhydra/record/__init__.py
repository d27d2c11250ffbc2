"""The run record: run and sweep directories, run.json's schema, atomic writes, the environment, latest."""
