"""Running one stage on several worker processes: cluster spec, collectives, local launcher."""
