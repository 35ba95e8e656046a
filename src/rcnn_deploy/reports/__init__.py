"""Renderers of measured results: ``reports.bench`` (one ``rcnn-deploy bench`` run: markdown, console table,
histograms) and ``reports.results`` (docs/results.md and the README's results tables from the committed GPU runs
under benchmarks/results/). Benchmarks and tests both import them from here."""
