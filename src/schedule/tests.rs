//! Unit tests of the fire-time arithmetic with fixed instants.
