"""On-device benchmarks: latency and memory against TensorFlow, formats, input sizes, fuzzing,
the results page and the web app; every target a ratio measured side by side in one run."""
