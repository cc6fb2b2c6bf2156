"""Multi-subject correspondence data: format, token mapping, sources and tools."""
