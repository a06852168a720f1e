"""Data sources (generated or read from the user's files) and in-memory loaders."""
