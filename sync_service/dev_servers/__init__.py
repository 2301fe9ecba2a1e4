"""Local stand-ins for the public source APIs (tests and the demo), with fault injection."""
