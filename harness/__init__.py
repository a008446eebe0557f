"""Running the product's processes outside production: for the demo, the end-to-end tests and
the benchmarks. ``harness.processes`` starts ``campaigns`` processes with their logs and waits
for them; ``harness.databases`` makes scratch databases; ``harness.measure`` counts rates and
overlaps in recorded times."""
