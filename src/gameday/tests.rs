//! Unit tests of reading game-day files: every error names file, line, column and key.
