"""Pure builders: what to run where, as argv lists and rendered files. No I/O here."""
