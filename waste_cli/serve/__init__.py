"""Stage: a model behind an HTTP endpoint (`wastecls serve`)."""
