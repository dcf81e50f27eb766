"""What each command runs, as a function: one module per CLI command, writing into one output folder."""
