"""flashkit.ops: public torch ops, one folder per op family."""
