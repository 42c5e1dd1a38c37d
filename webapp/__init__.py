"""The phone web app's sources (src/) and its vendored WASM runtime (vendor/, made by
`npm ci && npm run vendor` in this folder). Installed as the data package `fracture_edge_webapp`,
so `python -m device webapp` and `python -m device serve` find them without Node."""
