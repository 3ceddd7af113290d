"""``convsv analyze`` on every model format (one module per reader), its output and its errors."""
