"""Does the judge agree with a reference? Metrics, the job, and its report."""
