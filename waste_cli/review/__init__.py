"""Stage: what a person should check (audit) and the page to check it on (review)."""
