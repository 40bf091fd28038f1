"""Files: chunked sources, the stored column preprocessing, streaming epoch sources, model files."""
