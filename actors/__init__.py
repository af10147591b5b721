"""Ray actors: thin shells (resources, lifecycle, transport) over the memrl library."""
