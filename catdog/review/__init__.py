"""Human review: choose doubtful labels, send them to Label Studio or a task file, read the
answers back as human labels, and measure the labels nobody reviewed.

The data lives in :mod:`catdog.db.reviews`; training reads human labels from there, never
from this package.
"""
