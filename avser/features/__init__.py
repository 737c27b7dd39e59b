"""One clip in, arrays out: pure functions, no Ray."""
