"""`cripy ctl`: a small CRI v1 client with crictl's verbs and flags (entry point: cripy.ctl.main.main)."""
