"""Operator views: status, export rows, the HTML results report, the metrics exporter."""
