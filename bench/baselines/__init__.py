"""What users would write instead of raysplit; the benchmark measures raysplit against them."""
