"""Input and output at the edges: fsspec storage, table schemas, corpus readers, weights artifacts, the store."""
