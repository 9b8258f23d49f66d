"""The `oneiro` command and its HTTP client of the API: no service code runs here, so it starts at
once on any machine that can reach the API. Only `oneiro render` (the engine, imported when it
runs) and `oneiro keys` (the database) reach beyond HTTP."""
