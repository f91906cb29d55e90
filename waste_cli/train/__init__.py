"""Training: resolve a plan (recipe), the run's data (inputs), the Trainer that wires the plan
and runs the epoch loop (loop), self-training, distributed helpers, tracking, and
`wastecls train` (run)."""
