"""Running and recording jobs: the run directory and record schema, the job pipeline, failures before the job, the sweep policy, summaries and plots, replay and diff."""
