"""Clinic device: camera, film, service, install (issue 5); not built yet."""
