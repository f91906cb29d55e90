"""Training: resolve a plan (recipe), wire and run the loop (trainer), the data of a run
(splits), self-training, distributed helpers, tracking, and `wastecls train` (run)."""
