"""Command-line tools that span bundles: demo data, demo, benchmark."""
