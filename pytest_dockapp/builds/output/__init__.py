"""One module per builder output format, each folding it into :class:`BuildStep` records."""
